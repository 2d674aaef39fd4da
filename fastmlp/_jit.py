"""How fastmlp compiles its kernels, decided once for every kernel.

Five switches, read from the environment when fastmlp is imported:

``FASTMLP_CACHE`` (default ``1``)
    Cache compiled kernels on disk (Numba's ``cache=True``) so that a second
    process loads them instead of compiling again. Numba writes the cache next
    to the source, or where ``NUMBA_CACHE_DIR`` points; fastmlp never
    overrides a ``NUMBA_CACHE_DIR`` the user set.
``FASTMLP_FASTMATH`` (default ``1``)
    Let LLVM reassociate and contract floating-point arithmetic so that loops
    vectorise. The flag set leaves out ``nnan`` and ``ninf`` on purpose: with
    them LLVM may assume that no NaN or infinity ever occurs and optimise away
    the checks that detect a diverging run (numba#7701, numbagg#287).
``FASTMLP_PARALLEL`` (default ``1``)
    Spread kernels over Numba's threads. The number of threads is Numba's
    own setting (``NUMBA_NUM_THREADS`` or ``numba.set_num_threads``). Results
    do not depend on it: every kernel splits its work so that each output
    element is summed in the same order whatever the number of threads.
``FASTMLP_NOALIAS`` (default ``1``)
    Let the kernels that declare it (``kernel(noalias=True)``) promise LLVM
    that their array arguments never overlap; see :func:`_noalias_supported`.
``FASTMLP_WIDE_VECTORS`` (default ``1``)
    Let LLVM vectorise with the CPU's widest registers; see
    :func:`_wide_vectors_compiler`.

A switch changes how kernels compile, and Numba's cache does not record it:
after changing one, use a fresh ``NUMBA_CACHE_DIR`` (or ``FASTMLP_CACHE=0``).
"""

from __future__ import annotations

import os
import warnings

from numba import njit

__all__ = ["CACHE", "FASTMATH", "NOALIAS", "PARALLEL", "WIDE_VECTORS", "kernel"]


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


CACHE = _env_flag("FASTMLP_CACHE", True)
PARALLEL = _env_flag("FASTMLP_PARALLEL", True)
FASTMATH = (
    frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
    if _env_flag("FASTMLP_FASTMATH", True)
    else frozenset()
)


def _noalias_supported() -> bool:
    """Teach Numba's ``@njit`` a ``noalias`` option; return whether it could.

    With ``noalias``, LLVM may assume that no two array arguments of the
    function overlap. Without it, LLVM guards every vectorised loop with
    run-time overlap checks, and for the loops over one row of 64 hidden
    units these checks cost about as much as the arithmetic (the sparse first
    layer is 25% faster in float32 without them). Numba's compiler has the
    flag - its parallel loops set it when they prove their arrays distinct -
    but its decorators do not take it, so this maps a decorator option onto
    the flag. A Numba without the flag compiles the kernels without it: they
    stay correct, only slower.
    """
    try:
        from numba.core import compiler, cpu, options
    except ImportError:  # pragma: no cover - a Numba that moved its internals
        return False
    if not isinstance(getattr(compiler.Flags, "noalias", None), property):
        return False  # pragma: no cover
    if not hasattr(cpu.CPUTargetOptions, "noalias"):
        cpu.CPUTargetOptions.noalias = options.TargetOptions.Mapping("noalias")
    return True


NOALIAS = _env_flag("FASTMLP_NOALIAS", True) and _noalias_supported()

PREFER_WIDE = '"prefer-vector-width"="512"'
"""The LLVM function attribute that lifts the 256-bit preference."""


def _wide_vectors_compiler():
    """Numba's compiler, with every function it lowers marked
    :data:`PREFER_WIDE`; None where this Numba cannot be taught to.

    LLVM's models of Intel's server CPUs with AVX-512 (Skylake-SP to
    Emerald Rapids) prefer 256-bit vectors, a choice made for Skylake's
    lower clock under 512-bit instructions, so Numba's loops there use half
    the registers' width. On an Emerald Rapids, with 512-bit vectors, W1 ran
    1.46x (float64) and 1.60x (float32) faster, W2 1.21x and 1.38x, W3 1.30x
    and 1.45x (``benchmarks/compare.py``, medians of 6 pairs of processes).
    ``NUMBA_CPU_FEATURES=-prefer-256-bit``, which Numba's own tests use, does
    the same for every Numba function in the process, the user's too; the
    attribute changes only fastmlp's kernels. A parallel loop's body, which
    Numba compiles apart, gets the wide code of the kernels it calls when
    LLVM inlines them. Where the CPU has no wider vectors LLVM keeps 256
    bits, and its models of AMD's CPUs already prefer 512.
    """
    try:
        from numba.core.compiler import CompilerBase, DefaultPassBuilder
        from numba.core.compiler_machinery import register_pass
        from numba.core.lowering import Lower
        from numba.core.typed_passes import NativeLowering, NativeParforLowering
        from numba.parfors.parfor_lowering import ParforLower
    except ImportError:  # pragma: no cover - a Numba that moved its internals
        return None

    def marking(lower_class):
        class Marking(lower_class):
            def pre_lower(self):
                super().pre_lower()
                # llvmlite's attribute set accepts only the attributes it
                # knows, none of LLVM's "key"="value" ones; it prints any.
                set.add(self.builder.function.attributes, PREFER_WIDE)

        return Marking

    @register_pass(mutates_CFG=True, analysis_only=False)
    class WideLowering(NativeLowering):
        _name = "fastmlp_wide_lowering"
        lowering_class = marking(Lower)

    @register_pass(mutates_CFG=True, analysis_only=False)
    class WideParforLowering(NativeParforLowering):
        _name = "fastmlp_wide_parfor_lowering"
        lowering_class = marking(ParforLower)

    wide = {NativeLowering: WideLowering, NativeParforLowering: WideParforLowering}

    class WideVectorsCompiler(CompilerBase):
        def define_pipelines(self):
            pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pipeline.passes = [(wide.get(step, step), what) for step, what in pipeline.passes]
            pipeline.finalize()
            return [pipeline]

    return WideVectorsCompiler


WIDE_VECTORS_COMPILER = (
    _wide_vectors_compiler() if _env_flag("FASTMLP_WIDE_VECTORS", True) else None
)
WIDE_VECTORS = WIDE_VECTORS_COMPILER is not None


def kernel(
    function=None, *, parallel: bool = False, reassociate: bool = True, noalias: bool = False
):
    """Compile ``function`` with fastmlp's settings.

    Kernels release the GIL (``nogil``) so that several Python threads can
    train at once, and use NumPy's error model so that a division by zero
    gives inf instead of raising: kernels check finiteness where it matters.
    ``reassociate=False`` keeps the order of the function's own arithmetic,
    for code whose accuracy depends on it. ``noalias=True`` declares that
    no two array arguments of the function ever share memory: every caller
    must keep that promise, or the results are undefined.
    """

    def compile_(fn):
        options = dict(
            nogil=True,
            fastmath=set(FASTMATH) if reassociate else set(FASTMATH) - {"reassoc"},
            error_model="numpy",
            parallel=parallel and PARALLEL,
        )
        if noalias and NOALIAS:
            options["noalias"] = True
        if WIDE_VECTORS:
            options["pipeline_class"] = WIDE_VECTORS_COMPILER
        if CACHE:
            try:
                return njit(cache=True, **options)(fn)
            except RuntimeError as error:
                # A read-only install with no writable user cache directory
                # (numba#1771, #5566): run uncached rather than not at all.
                warnings.warn(
                    f"fastmlp cannot cache compiled kernels ({error}); "
                    "set NUMBA_CACHE_DIR to a writable directory to avoid "
                    "compiling in every process",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return njit(cache=False, **options)(fn)

    return compile_ if function is None else compile_(function)
