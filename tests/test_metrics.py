import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from artbank_pl.metrics import CLIPImageEncoder, StyleTransferMetrics, kernel_inception_distance
from artbank_pl.vision import load_vision_encoder

COLLECTIONS = ["monet", "hokusai"]


def images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def metrics():
    m = StyleTransferMetrics(CLIPImageEncoder(load_vision_encoder("tiny")), COLLECTIONS)
    m.set_exemplars(0, images(6, 1))
    m.set_exemplars(1, images(6, 2))
    return m


def test_identical_output_and_content_score_maximal_content_similarity():
    m = metrics()
    content = images(4, 3)
    m.update(content, content, [0, 0, 1, 1])
    result = m.compute()
    assert result["content_sim"] == pytest.approx({"monet": 1.0, "hokusai": 1.0}, abs=1e-5)
    assert result["ssim"] == pytest.approx({"monet": 1.0, "hokusai": 1.0}, abs=1e-5)
    other = metrics()
    other.update(images(4, 4), content, [0, 0, 1, 1])
    assert all(v < 0.999 for v in other.compute()["content_sim"].values())


def test_style_similarity_by_hand():
    m = metrics()
    outputs = images(2, 5)
    m.update(outputs, images(2, 6), [1, 1])
    out_f = m.encoder(outputs)
    centre = torch.nn.functional.normalize(m.encoder(images(6, 2)).mean(0), dim=-1)
    manual = (out_f * centre).sum(-1).mean()
    result = m.compute()
    assert result["style_sim"]["hokusai"] == pytest.approx(float(manual), abs=1e-5)
    assert "monet" not in result["style_sim"]


def test_kid_of_a_set_against_itself_is_about_zero():
    m = StyleTransferMetrics(CLIPImageEncoder(load_vision_encoder("tiny")), COLLECTIONS)
    same = images(16, 11)
    m.set_exemplars(0, same)
    m.update(same, same, [0] * 16)
    assert abs(m.compute()["kid"]["monet"]) < 0.01
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen) + 3.0, dim=-1)
    assert abs(kernel_inception_distance(a, a)) < 0.01
    assert kernel_inception_distance(a, b) > 10 * abs(kernel_inception_distance(a, a))


def _worker(rank, world, port, outputs, contents, labels, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = metrics()
    m.update(outputs[rank::world], contents[rank::world], labels[rank::world])
    queue.put((rank, m.compute()))
    dist.destroy_process_group()


def test_metrics_are_the_same_on_one_and_two_processes():
    outputs, contents = images(8, 7), images(8, 8)
    labels = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1])
    single = metrics()
    single.update(outputs, contents, labels)
    expected = single.compute()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_worker, args=(r, 2, port, outputs, contents, labels, queue))
             for r in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank in (0, 1):
        for name, values in expected.items():
            assert results[rank][name] == pytest.approx(values, abs=1e-5), (rank, name)
    assert set(expected) == {"style_sim", "content_sim", "ssim", "kid"}
