"""The FUSE passthrough trade, measured (run by bench/passthrough.sh).

Reads: the same files read natively, through a chaserfs session, through a FUSE mount that
hands each open to the kernel's passthrough (fuse-floor --passthrough), and through the same
mount serving each READ itself from the backing file (--plain). Writes: native, chaserfs, and
the null filesystem (fuse-floor --serve) with and without the writeback cache, which the
kernel refuses to combine with passthrough on one mount."""

import argparse
import os
import statistics

from datapath import drop_caches, fio, iops, mbps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, required=True)
    ap.add_argument("--reads", nargs="+", required=True, help="NAME=DIR holding seq and rand")
    ap.add_argument("--writes", nargs="+", required=True, help="NAME=DIR to write in")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    size = f"{a.size_mib}M"
    results = {}
    rows = []

    # Each row: every target once per round, the order rotated each round (this disk's speed
    # swings from minute to minute), and each target's median.
    def workload(key, label, unit, higher, targets, fn, cold):
        rows.append((key, label, unit, higher, [n for n, _ in targets]))
        runs = {name: [] for name, _ in targets}
        for r in range(a.rounds):
            for name, d in targets[r % len(targets):] + targets[:r % len(targets)]:
                if cold:
                    drop_caches()
                else:
                    os.sync()
                runs[name].append(fn(d))
        results[key] = {name: statistics.median(v) for name, v in runs.items()}
        for name, v in runs.items():
            print(f"  {label}: {name} {results[key][name]:.4g} {unit} "
                  f"({' '.join(f'{x:.4g}' for x in v)})", flush=True)

    reads = [t.split("=", 1) for t in a.reads]
    writes = [t.split("=", 1) for t in a.writes]
    seq = ["--rw=read", "--bs=1M", f"--size={size}", "--filename=seq", "--invalidate=0"]
    rand = ["--rw=randread", "--bs=4k", "--size=512M", "--filename=rand", "--invalidate=0"]
    # Cold: 16,384 reads, each of a block not read before in the run (fio's random map), so
    # none is served from a page cache the run itself filled.
    rand_cold = rand + ["--io_size=64M"]
    # Warm: the whole file read once first, then 10 s of random reads from the page cache.
    rand_warm = rand + ["--runtime=10", "--time_based"]
    fill_rand = ["--rw=read", "--bs=1M", "--size=512M", "--filename=rand", "--invalidate=0"]
    workload("seqr_cold", f"sequential read {a.size_mib} MiB, cold", "MB/s", True, reads,
             lambda d: mbps(fio(d, *seq)), cold=True)

    def warm(d, fill, args, measure):
        fio(d, *fill)  # the file in the page cache first
        return measure(fio(d, *args))

    workload("seqr_warm", "sequential read, warm", "MB/s", True, reads,
             lambda d: warm(d, seq, seq, mbps), cold=False)
    workload("randr_cold", "random 4 KiB read, 512 MiB file, cold, 64 MiB of it", "IOPS", True,
             reads, lambda d: iops(fio(d, *rand_cold)), cold=True)
    workload("randr_warm", "random 4 KiB read, 512 MiB file, warm, 10 s", "IOPS", True, reads,
             lambda d: warm(d, fill_rand, rand_warm, iops), cold=False)
    workload("seqw", f"sequential write {a.size_mib} MiB, 1 MiB blocks, fsync at end", "MB/s",
             True, writes, lambda d: mbps(fio(d, "--rw=write", "--bs=1M", f"--size={size}",
                                              "--end_fsync=1", "--filename=w")), cold=False)
    workload("randw", "random 4 KiB write, 512 MiB file, 10 s", "IOPS", True, writes,
             lambda d: iops(fio(d, "--rw=randwrite", "--bs=4k", "--size=512M",
                                "--filename=w", "--runtime=10", "--time_based")), cold=False)
    workload("append", "4 KiB append + fdatasync, per op", "ms", False, writes,
             lambda d: 1000 / iops(fio(d, "--rw=write", "--bs=4k", "--size=1G",
                                       "--filename=a", "--fdatasync=1", "--runtime=5")),
             cold=False)

    print(f"\nEach figure the median of {a.rounds} rounds, the targets' order rotated each round; "
          "ratios are to native, oriented so that higher is better for the target.")
    for key, label, unit, higher, names in rows:
        if key in ("seqr_cold", "seqw"):
            print("\n| workload | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
        cells = []
        for n in names:
            v = results[key][n]
            fig = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            base = results[key][names[0]]
            r = v / base if higher else base / v
            cells.append(f"{fig} {unit}" if n == names[0] else f"{fig} ({r:.2f}x)")
        print(f"| {label} ({unit}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
