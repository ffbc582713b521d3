"""carelab.diffusion — masked-diffusion vs autoregressive LMs under data constraints.

"With limited data, which objective should I pretrain with, and when does it pay off?" One GPT
backbone (``model``) trained with two objectives (``objectives``) on U unique tokens repeated for E
epochs (``corpus``, ``sweep``); the data-constrained scaling law is fitted per objective and the plots
and report are drawn by ``scaling``; ``sampling`` generates from either model. See docs/diffusion.md.
"""
