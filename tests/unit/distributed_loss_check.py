"""Run as `python -m tests.unit.distributed_loss_check KIND OUT`: 2 gloo processes compute the
loss and gradients on halves of a batch; rank 0 saves them to OUT. A separate interpreter keeps
the process group away from whatever else the test process runs (a Ray driver, say)."""

import math
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmtrain.training.engine.losses import infonce_loss, siglip_loss

BATCH, DIM, EMB = 6, 10, 8


def encoders():
    torch.manual_seed(0)
    return nn.Linear(DIM, EMB), nn.Linear(DIM, EMB)


def data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2 * BATCH, DIM, generator=generator), torch.randn(2 * BATCH, DIM, generator=generator)


def loss_of(kind, image_enc, text_enc, images, texts):
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-2.0)
    image = nn.functional.normalize(image_enc(images), dim=-1)
    text = nn.functional.normalize(text_enc(texts), dim=-1)
    return infonce_loss(image, text, scale) if kind == "infonce" else siglip_loss(image, text, scale, bias)


def worker(rank, kind, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    image_enc, text_enc = encoders()
    image_ddp = nn.parallel.DistributedDataParallel(image_enc)
    text_ddp = nn.parallel.DistributedDataParallel(text_enc)
    images, texts = data()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    loss = loss_of(kind, image_ddp, text_ddp, images[rows], texts[rows])
    loss.backward()
    losses = [torch.zeros(1), torch.zeros(1)]
    dist.all_gather(losses, loss.detach().view(1))
    if rank == 0:
        torch.save(
            {"loss": torch.cat(losses).mean(), "image_grad": image_enc.weight.grad, "text_grad": text_enc.weight.grad},
            out,
        )
    dist.barrier()
    # Tearing down gloo with DDP reducers alive can hang in a destructor (seen with torch 2.13);
    # the results are saved, so leave without it.
    os._exit(0)


def spawn_two(worker) -> None:
    """Run worker(rank, KIND, port, OUT) in 2 processes, KIND and OUT from the command line."""
    kind, out = sys.argv[1], sys.argv[2]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(kind, port, out), nprocs=2, join=True)


if __name__ == "__main__":
    spawn_two(worker)
