"""Speed and fidelity of robustlab's corruptions against the `imagecorruptions` reference.

Throughput (images/s, CPU, one thread for both libraries: ``torch.set_num_threads(1)`` and
``cv2.setNumThreads(1)``) of every ImageNet-C and extra corruption at 32 and 224 px. robustlab
corrupts a realistic batch per call (default 64 images at 224 px, 256 at 32 px); the reference
corrupts one image per call (its only mode) over a few images. The two are timed interleaved (one
robustlab batch, then the reference images, severity cycling 1-5, ``--repeats`` rounds) and each
side's images/s is the median over rounds, so machine load hits both alike. By default the clock
is the process CPU time (``--clock process``; ``wall`` for wall-clock), which is what one thread
costs, independent of other jobs on a shared machine.

Fidelity: the mean absolute change from the clean image at each severity (pixels in [0, 1]) for
both libraries on the same natural images at 224 px, the reference size where every parameter of
the two is the same, and the ratio robustlab / reference (goal: within 25 %, i.e. 0.75-1.25).
MNIST-C corruptions are timed at 28 px (their reference code needs ImageMagick and is not
packaged, so there is no side-by-side run).

The reference package (`pip install imagecorruptions-imaug`) lives only in the benchmark
environment; without it only robustlab's numbers are printed. Natural test images come from
scikit-image's bundled data when it is installed (it is a dependency of the reference), else from
a procedural stand-in. Prints JSON; ``--out`` also writes it.

    .bench-venv/bin/python bench/corruption_speed.py --repeats 7 \
        --out bench/results/corruption_speed.json --markdown bench/results/corruption_speed.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.corruptions import CORRUPTION_SETS, corrupt
from robustlab.provenance import provenance

REF_NAMES = {"jpeg-compression": "jpeg_compression"}  # ours -> reference spelling (else -/_)
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle_left")


def natural_images(size: int, count: int) -> torch.Tensor:
    """``count`` RGB images (count, 3, size, size) in [0, 1]: centre crops of scikit-image's data."""
    try:
        import skimage.data as data
    except ImportError:
        data = None
    imgs = []
    if data is not None:
        for name in SKIMAGE_IMAGES:
            try:
                a = getattr(data, name)()
            except Exception:  # some images need a download; skip them
                continue
            if a.ndim != 3:
                continue
            h, w = a.shape[:2]
            s = min(h, w)
            a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
            imgs.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255)
    if not imgs:  # procedural stand-in: smooth colour fields with edges
        g = torch.Generator().manual_seed(0)
        base = torch.rand(count, 3, 8, 8, generator=g)
        imgs = list(F.interpolate(base, size=(256, 256), mode="bicubic").clamp(0, 1))
    out = [F.interpolate(im[None], size=(size, size), mode="area")[0] for im in imgs]
    while len(out) < count:
        out += [im.flip(-1) for im in out]
    return torch.stack(out[:count]).clamp(0, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


CLOCKS = {"process": time.process_time, "wall": time.perf_counter}


def change_ours(name: str, x: torch.Tensor, severities) -> list[float]:
    """Mean |corrupted - clean| per severity."""
    return [float((corrupt(x, name, s, seed=s) - x).abs().mean()) for s in severities]


def change_reference(fn, name: str, x: torch.Tensor, severities) -> list[float]:
    imgs = [to_uint8(im) for im in x]
    np.random.seed(0)
    out = []
    for s in severities:
        diffs = [np.abs(np.asarray(fn(im, corruption_name=name, severity=s), dtype=np.float64)
                        / 255 - im / 255.0).mean() for im in imgs]
        out.append(float(np.mean(diffs)))
    return out


def speed(name: str, x: torch.Tensor, ref_fn, ref_name: str | None, ref_count: int,
          repeats: int, clock) -> dict[str, float]:
    """Interleaved timing: each round one robustlab batch, then ``ref_count`` reference calls, at
    the same severity (cycling 1-5). Returns the median images/s of each side."""
    imgs = [to_uint8(im) for im in x[:ref_count]]
    corrupt(x[:2], name, 1, seed=123)  # warm-up
    if ref_fn is not None:
        np.random.seed(0)
        ref_fn(imgs[0], corruption_name=ref_name, severity=1)  # warm-up (numba compiles)
    ours_ips, ref_ips = [], []
    for r in range(repeats):
        s = r % 5 + 1
        t0 = clock()
        corrupt(x, name, s, seed=r)
        ours_ips.append(len(x) / max(clock() - t0, 1e-9))
        if ref_fn is not None:
            t0 = clock()
            for im in imgs:
                ref_fn(im, corruption_name=ref_name, severity=s)
            ref_ips.append(len(imgs) / max(clock() - t0, 1e-9))
    out = {"ours": float(np.median(ours_ips))}
    if ref_ips:
        out["ref"] = float(np.median(ref_ips))
        out["speedup"] = out["ours"] / out["ref"]
    return out


def markdown(out: dict) -> str:
    """The per-corruption table of ``out`` (the JSON this script prints) in Markdown."""
    fmt = " / ".join

    def cells(v: list | None, digits: int) -> str:
        return fmt(f"{u:.{digits}f}" if u is not None else "-" for u in v) if v else "-"

    lines = [
        "| corruption | ours 32 px | ref 32 px | speed-up 32 | ours 224 px | ref 224 px"
        " | speed-up 224 | change ours (s1-s5) | change ref (s1-s5) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["imagenet_c"].items():
        num = {k: f"{r[k]:.0f}" if k in r else "-" for k in
               ("ours_ips_32", "ref_ips_32", "ours_ips_224", "ref_ips_224")}
        up = {k: f"{r[k]:.1f}x" if k in r else "-" for k in ("speedup_32", "speedup_224")}
        lines.append(
            f"| {name} | {num['ours_ips_32']} | {num['ref_ips_32']} | {up['speedup_32']} | "
            f"{num['ours_ips_224']} | {num['ref_ips_224']} | {up['speedup_224']} | "
            f"{cells(r.get('ours_change_224'), 3)} | {cells(r.get('ref_change_224'), 3)} | "
            f"{cells(r.get('change_ratio_224'), 2)} |"
        )
    lines += ["", "| MNIST-C corruption | ours 28 px (img/s) |", "|---|---|"]
    lines += [f"| {n} | {r['ours_ips_28']:.0f} |" for n, r in out["mnist_c"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-224", type=int, default=64, help="robustlab batch at 224 px")
    ap.add_argument("--batch-32", type=int, default=256, help="robustlab batch at 32 px")
    ap.add_argument("--batch-28", type=int, default=256, help="gray batch at 28 px (MNIST-C)")
    ap.add_argument("--ref-images", type=int, default=8, help="reference images per round")
    ap.add_argument("--fidelity-images", type=int, default=8, help="images at 224 px (fidelity)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="process")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated corruptions (default: all)")
    ap.add_argument("--no-fidelity", action="store_true", help="skip the fidelity table")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
        from imagecorruptions import corrupt as ref_corrupt
        ref_error = None
    except Exception as e:  # the reference is optional and often broken; say how
        ref_corrupt, ref_error = None, f"{type(e).__name__}: {e}"

    sev = (1, 2, 3, 4, 5)
    names = list(CORRUPTION_SETS["imagenet-c"] + CORRUPTION_SETS["imagenet-c-extra"])
    mnist = list(CORRUPTION_SETS["mnist-c"])
    if args.only:
        keep = set(args.only.split(","))
        names = [n for n in names if n in keep]
        mnist = [n for n in mnist if n in keep]
    clock = CLOCKS[args.clock]
    batches = {224: natural_images(224, args.batch_224), 32: natural_images(32, args.batch_32)}
    x_fid = natural_images(224, args.fidelity_images)
    x28 = natural_images(28, args.batch_28).mean(1, keepdim=True)
    rows = {}
    for name in names:
        ref_name = REF_NAMES.get(name, name.replace("-", "_"))
        row: dict = {}
        for size, x in batches.items():
            try:
                sp = speed(name, x, ref_corrupt, ref_name, args.ref_images, args.repeats, clock)
            except Exception as e:  # the reference fails on some inputs; time ours alone
                row["ref_error"] = f"{type(e).__name__}: {e}"
                sp = speed(name, x, None, None, 0, args.repeats, clock)
            row.update({f"{k}_ips_{size}" if k != "speedup" else f"speedup_{size}": v
                        for k, v in sp.items()})
        if not args.no_fidelity:
            row["ours_change_224"] = change_ours(name, x_fid, sev)
            if ref_corrupt is not None and "ref_error" not in row:
                row["ref_change_224"] = change_reference(ref_corrupt, ref_name, x_fid, sev)
                row["change_ratio_224"] = [
                    o / r if r > 0 else None
                    for o, r in zip(row["ours_change_224"], row["ref_change_224"])
                ]
        rows[name] = row
        print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else
                                    [round(u, 3) if u is not None else None for u in v]
                                    if isinstance(v, list) else v) for k, v in row.items()}),
              flush=True)
    mrows = {n: {"ours_ips_28": speed(n, x28, None, None, 0, args.repeats, clock)["ours"]}
             for n in mnist}
    out = {
        "reference": "imagecorruptions-imaug" if ref_corrupt else None,
        "reference_error": ref_error,
        "threads": args.threads,
        "clock": args.clock,
        "batch": {"224": args.batch_224, "32": args.batch_32, "28": args.batch_28},
        "reference_images_per_round": args.ref_images,
        "repeats": args.repeats,
        "imagenet_c": rows,
        "mnist_c": mrows,
        "provenance": provenance(seed=0, device="cpu", config={
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(out))


if __name__ == "__main__":
    main()
