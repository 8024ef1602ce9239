"""The compiled `cuda` engine's shapes: one graph per length bucket whatever the rows, so a served pass
never compiles (on an H200 the first version recompiled while serving: p95 3.8 s at 16 users)."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jina_triton_pipeline.eurobert import EuroBert  # noqa: E402
from jina_triton_pipeline.pooling import last_token_torch  # noqa: E402
from jina_triton_pipeline.torch_engine import CompiledShapes  # noqa: E402

CONFIG = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
          "vocab_size": 97, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
BUCKETS = (16, 32, 64)


def traced(graph, example_inputs):
    """A torch.compile backend that runs the traced graph as it is (CompiledShapes counts the graphs)."""
    return graph.forward


def guarded_like_a_gpu(graph, example_inputs):
    """As `traced`, after the guard inductor's GPU kernels add for a dynamic dimension: every
    activation indexable in 32 bits (rows x length x 3072, the MLP's width in the real model)."""
    shape_env = torch._guards.TracingContext.get().fake_mode.shape_env
    for node in graph.graph.nodes:
        value = node.meta.get("example_value")
        if node.op == "placeholder" and isinstance(value, torch.Tensor) and value.dim() == 2 \
                and isinstance(value.shape[0], torch.SymInt):
            numel = value.shape[0] * value.shape[1] * 3072
            shape_env.guard_or_defer_runtime_assert((numel <= 2**31 - 1).node.expr, "32-bit indexing")
            break
    return graph.forward


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return EuroBert(CONFIG).eval()


def _batch(rows: int, length: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CONFIG["vocab_size"], (rows, length), generator=generator)
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    lengths[0] = length  # the pass is as long as its longest row
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def test_every_pass_shape_reuses_its_buckets_graph(model):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = CompiledShapes(model, BUCKETS, backend=traced)
    shapes = [(4, 16), (4, 32), (4, 64), (1, 9), (3, 20), (1, 64), (2, 33), (7, 60), (1, 1), (200, 16), (5, 31)]
    for seed, (rows, length) in enumerate(shapes):
        batch = _batch(rows, length, seed)  # made outside inference mode: a served pass's tensors may be
        with torch.inference_mode():
            if seed % 2:  # ... and inside it, as the warm-up's are
                batch = _batch(rows, length, seed)
            assert compiled(*batch).shape == (rows, CONFIG["hidden_size"])
        if seed == 2:  # the buckets warmed, as warm_up does
            assert compiled.graphs == len(BUCKETS)
    assert compiled.graphs == len(BUCKETS)  # none while serving
    assert torch._dynamo.config.automatic_dynamic_shapes  # the setting stays inside the calls


def test_the_row_dimension_survives_the_guards_of_gpu_kernels(model):
    """Bounds on the dynamic rows (min/max) make them a strict constraint that a kernel's guard breaks:
    the load would fail on a GPU (found in review before any GPU ran it)."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = CompiledShapes(model, BUCKETS, backend=guarded_like_a_gpu)
    with torch.inference_mode():
        for seed, (rows, length) in enumerate([(4, 64), (1, 64), (300, 64)]):
            assert compiled(*_batch(rows, length, seed)).shape == (rows, CONFIG["hidden_size"])
    assert compiled.graphs == 1


def test_compiled_answers_equal_the_eager_model_for_one_row_and_many(model):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = CompiledShapes(model, BUCKETS, backend=traced)
    with torch.inference_mode():
        for seed, (rows, length) in enumerate([(1, 10), (3, 16), (6, 40), (2, 70)]):  # 70: past every bucket
            ids, mask = _batch(rows, length, seed)
            want = last_token_torch(model(ids, mask), mask.sum(1))
            np.testing.assert_allclose(compiled(ids, mask).numpy(), want.numpy(), atol=1e-5)


def test_padding_rows_are_dropped_and_an_empty_pass_answers_empty(model):
    """Padding rows go after the pass's rows and are sliced off: with four rows of minimum, a pass of
    three keeps its own three in order (a slice from the end would hand back a copy of the first)."""
    import torch._dynamo

    class FourRows(CompiledShapes):
        MIN_ROWS = 4

    torch._dynamo.reset()
    compiled = FourRows(model, BUCKETS, backend=traced)
    with torch.inference_mode():
        ids, mask = _batch(3, 20, 7)
        want = last_token_torch(model(ids, mask), mask.sum(1))
        np.testing.assert_allclose(compiled(ids, mask).numpy(), want.numpy(), atol=1e-5)
        empty = torch.zeros((0, 20), dtype=torch.int64)
        assert compiled(empty, empty).shape == (0, CONFIG["hidden_size"])


def test_a_c_locale_process_reads_files_as_utf8_once_compiling():
    """A Triton stub's interpreter starts isolated, in the C locale: inductor's UTF-8 templates failed to
    load there (box emulation, 2026-12-04). utf8_locale() switches it before any compile."""
    script = ("import locale; from jina_triton_pipeline.torch_engine import utf8_locale; "
              "print(locale.getpreferredencoding(False)); assert utf8_locale(); "
              "print(locale.getpreferredencoding(False))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    before, after = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                   check=True).stdout.split()
    assert before.replace("-", "").lower() != "utf8" and after.replace("-", "").lower() == "utf8", (before, after)
