"""carelab.watermark: do KGW/Unigram watermarks in generated code survive semantics-preserving edits?

One module per job — ``schemes`` (watermarks: seeding, processor, detector), ``transforms`` (libcst
edits), ``sandbox`` (contained execution), ``humaneval`` (problems and the scored text), ``robustness``
(the experiment) and ``cli``. Heavy dependencies are imported inside functions, so importing the
package stays cheap.
"""
