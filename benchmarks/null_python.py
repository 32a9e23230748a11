"""`python`, with picograd's CUDA backend on benchmarks/cuda_host.py's driver that does nothing: a dry run of
benchmarks/gpu_check.sh on a machine without a GPU runs every step's code (its numbers and values are
meaningless; the CUDA checks report wrong values, as they should).

    PY="python benchmarks/null_python.py" EPOCHS=1 bash benchmarks/gpu_check.sh
"""

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_host  # noqa: E402

cuda_host.install()
args = sys.argv[1:]
if args[0] == "-c":
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
elif args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
elif args[0] == "-":
    sys.argv = ["-"]
    exec(compile(sys.stdin.read(), "<stdin>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
