"""What an ``s3://`` run directory costs against a local one, per checkpoint and per start, in one run:

(a) persisting one checkpoint: the files a rank writes (``save_checkpoint`` into a temporary folder, timed apart)
    copied into the run directory the way Ray Train persists a reported checkpoint (``pyarrow.fs.copy_files``
    to the run's file system), local folder vs S3;
(b) the check before a start resumes: ``resume_point`` on a run directory of 3 checkpoints (the newest downloaded
    and verified on S3, every one verified locally).

The S3 server is moto's (server mode on 127.0.0.1, in this process), so (a) and (b) measure HTTP, signing and
serialization through an S3 API, not a real S3 region's bandwidth or latency. The two storages take turns and
each number is the median over ``--repeats`` tries.

    python benchmarks/s3_checkpoints.py --model-size tiny --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from sigma_ray.method.sigma import ObjectiveConfig, build_model
    from sigma_ray.method.vit import ModelConfig
    from sigma_ray.runs import checkpoint as local_ckpt, object_rundir

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket="bench")

    torch.manual_seed(0)
    model = build_model(ModelConfig(size=args.model_size, num_frames=args.frames, img_size=args.size),
                        ObjectiveConfig())
    optimizer = torch.optim.AdamW(model.parameters())
    for prm in model.parameters():   # AdamW's moments exist once it has stepped, as in a real checkpoint
        prm.grad = torch.zeros_like(prm)
    optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        local_run = Path(tmp) / "run"
        s3_fs, s3_run = pafs.FileSystem.from_uri("s3://bench/run")
        times: dict[str, list[float]] = {"save": [], "local": [], "s3": [], "verify local": [], "verify s3": []}
        size = 0
        for i in range(args.repeats):
            name = local_ckpt.checkpoint_dir_name(i + 1)
            staged = Path(tmp) / "staged" / name
            t0 = time.perf_counter()
            local_ckpt.save_checkpoint(staged, step=i + 1, model=model, optimizer=optimizer)
            times["save"].append(time.perf_counter() - t0)
            size = sum(f.stat().st_size for f in staged.iterdir())
            for where in (("local", "s3") if i % 2 == 0 else ("s3", "local")):
                t0 = time.perf_counter()
                if where == "local":
                    (local_run / name).mkdir(parents=True)
                    pafs.copy_files(str(staged), str(local_run / name), destination_filesystem=pafs.LocalFileSystem())
                else:
                    pafs.copy_files(str(staged), f"{s3_run}/{name}", source_filesystem=pafs.LocalFileSystem(),
                                    destination_filesystem=s3_fs)
                times[where].append(time.perf_counter() - t0)
        for i in range(args.repeats):
            for where in (("verify local", "verify s3") if i % 2 == 0 else ("verify s3", "verify local")):
                t0 = time.perf_counter()
                if where == "verify local":
                    local_ckpt.resume_point(local_run)
                else:
                    object_rundir.resume_point("s3://bench/run")
                times[where].append(time.perf_counter() - t0)
    server.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model_size} {args.frames}x{args.size}px, checkpoint {size / 2**20:.1f} MiB, "
          f"median of {args.repeats}")
    print("| what | local | s3 (moto, 127.0.0.1) | s3 / local |")
    print("| --- | --- | --- | --- |")
    print(f"| write the checkpoint's files (both) | {med['save'] * 1e3:.0f} ms | | |")
    print(f"| persist one checkpoint | {med['local'] * 1e3:.0f} ms | {med['s3'] * 1e3:.0f} ms | "
          f"{med['s3'] / med['local']:.1f}x |")
    print(f"| check before a resume ({args.repeats} checkpoints) | {med['verify local'] * 1e3:.0f} ms | "
          f"{med['verify s3'] * 1e3:.0f} ms | {med['verify s3'] / med['verify local']:.1f}x |")


if __name__ == "__main__":
    main()
