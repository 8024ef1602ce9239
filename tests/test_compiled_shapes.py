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


class CountingBackend:
    """A torch.compile backend that runs the traced graph as it is and counts the graphs it is given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
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
    backend = CountingBackend()
    compiled = CompiledShapes(model, BUCKETS, backend=backend)
    shapes = [(4, 16), (4, 32), (4, 64), (1, 9), (3, 20), (1, 64), (2, 33), (7, 60), (1, 1), (200, 16), (5, 31)]
    with torch.inference_mode():
        for seed, (rows, length) in enumerate(shapes):
            assert compiled(*_batch(rows, length, seed)).shape == (rows, CONFIG["hidden_size"])
    assert backend.graphs == len(BUCKETS)


def test_compiled_answers_equal_the_eager_model_for_one_row_and_many(model):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = CompiledShapes(model, BUCKETS, backend=CountingBackend())
    with torch.inference_mode():
        for seed, (rows, length) in enumerate([(1, 10), (3, 16), (6, 40), (2, 70)]):  # 70: past every bucket
            ids, mask = _batch(rows, length, seed)
            want = last_token_torch(model(ids, mask), mask.sum(1))
            np.testing.assert_allclose(compiled(ids, mask).numpy(), want.numpy(), atol=1e-5)


def test_a_c_locale_process_reads_files_as_utf8_once_compiling():
    """A Triton stub's interpreter starts isolated, in the C locale: inductor's UTF-8 templates failed to
    load there (box emulation, 2026-12-04). utf8_locale() switches it before any compile."""
    script = ("import locale; from jina_triton_pipeline.torch_engine import utf8_locale; "
              "print(locale.getpreferredencoding(False)); utf8_locale(); print(locale.getpreferredencoding(False))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    before, after = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                   check=True).stdout.split()
    assert before.replace("-", "").lower() != "utf8" and after.replace("-", "").lower() == "utf8", (before, after)
