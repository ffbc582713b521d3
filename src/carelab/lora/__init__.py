"""carelab.lora: LoRA variants behind one switch, the LoRA-Pro optimizer, and the gradient-fidelity experiment.

Submodules are imported on demand (``carelab.lora.variants``, ``carelab.lora.lorapro``,
``carelab.lora.fidelity``) so that ``import carelab`` and ``carelab --help`` stay free of torch/peft.
"""
