"""The measurement scripts: the Frank-Wolfe step against its parts (``fw_suite``), the
recurrences (``perf_models``), the authors' PyTorch side by side (``compare_torch``), cores,
seeds in one program, several devices (``distributed``), and the one GPU run
(``gpu_check.sh``)."""
