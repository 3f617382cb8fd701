"""The training machinery: the loop and its state, checkpoints and curves (``train``,
``curves``), data parallelism (``parallel``), truncated BPTT (``tbptt``) and the data
(``data``)."""
