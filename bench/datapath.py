"""Runs the data-path workloads on every target, interleaved per workload, and prints one table.

Called by bench/datapath.sh, which mounts the targets:
    python3 bench/datapath.py --work DIR --size-mib N --daemon-pid PID --daemon-url URL NAME=DIR...
The first target is the baseline (native); every other figure is shown as a ratio to it,
oriented so that higher is better for the target. For the small-file workloads it also prints
the FUSE requests the `chaserfs` target's daemon served per file, by operation, from the
daemon's /metrics; for the read rows, each target's disk reads (their number and average
size); for the fsync rows, the commits the chaserfs daemon made meanwhile.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import time
import urllib.request


def sh(*cmd, cwd=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(directory, *args):
    out = subprocess.run(
        ["fio", "--name=b", f"--directory={directory}", "--output-format=json", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]


def mbps(job):
    return (job["read"]["bw_bytes"] + job["write"]["bw_bytes"]) / 1e6


def iops(job):
    return job["read"]["iops"] + job["write"]["iops"]


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


class PeakRss:
    """The chaserfs daemon's peak RSS over a block (VmHWM, reset through clear_refs)."""

    def __init__(self, pid):
        self.pid = pid
        self.peaks = {}

    def reset(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5\n")

    def read(self, label):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    self.peaks[label] = int(line.split()[1]) // 1024
                    return


def fuse_requests(url):
    """FUSE requests the daemon has served since it started, by operation (kernel requests
    fuser answers alone, such as IOCTL, are not counted)."""
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    pattern = r'^chaserfs_fuse_request_duration_seconds_count\{op="(\w+)"\} (\d+)$'
    return {m[1]: int(m[2]) for m in re.finditer(pattern, text, re.M)}


def commits(url):
    """Commits the daemon has made since it started, and the seconds they took."""
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    found = dict(re.findall(r"^chaserfs_commit_duration_seconds_(sum|count) (\S+)$", text, re.M))
    return int(float(found.get("count", 0))), float(found.get("sum", 0))


def disk_reads(path):
    """Reads the disk holding `path` has completed and the bytes they read (/proc/diskstats:
    major, minor, name, reads, merged, sectors read, ...), or None if it is no block device."""
    dev = os.stat(path).st_dev
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if (int(p[0]), int(p[1])) == (os.major(dev), os.minor(dev)):
                return int(p[3]), int(p[5]) * 512
    return None


def small_files(d, n):
    os.mkdir(d)
    for i in range(n):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write("x")
    for i in range(n):
        os.stat(os.path.join(d, f"f{i}"))
    for i in range(n):
        os.unlink(os.path.join(d, f"f{i}"))
    os.rmdir(d)


def make_inputs(work):
    """A tar of 20,000 tiny files, a tar of the Python standard library with site-packages,
    and a 20,000-file git repository, all built once on the native disk."""
    tiny = os.path.join(work, "tiny")
    for d in range(100):
        os.makedirs(os.path.join(tiny, f"d{d}"))
        for f in range(200):
            with open(os.path.join(tiny, f"d{d}", f"f{f}"), "w") as fh:
                fh.write(f"{d} {f}\n")
    sh("tar", "-cf", os.path.join(work, "tiny.tar"), "-C", tiny, ".")
    stdlib = sysconfig.get_paths()["stdlib"]
    sh("tar", "-cf", os.path.join(work, "tree.tar"), "-C", os.path.dirname(stdlib),
       os.path.basename(stdlib))
    tree_files = sum(len(fs) + len(ds) for _, ds, fs in os.walk(stdlib))
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    for d in range(200):
        os.makedirs(os.path.join(repo, f"dir{d}"))
        for f in range(100):
            with open(os.path.join(repo, f"dir{d}", f"file{f}.txt"), "w") as fh:
                fh.write(f"{d}/{f}\n" * (1 + f % 7))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    sh("git", "init", "-q", ".", cwd=repo)
    sh("git", "add", ".", cwd=repo)
    sh(*git, "commit", "-qm", "c", cwd=repo)
    return stdlib, tree_files


# The filesystem with nothing behind it (`fuse-floor --serve`): it keeps no bytes, so it runs
# only the rows whose workloads never read back what they wrote.
FLOOR = "fuse-floor"
FLOOR_ROWS = {"seqw", "seqr_cold", "seqr_warm", "randr", "randw", "append", "overwrite",
              "randover", "small", "tiny"}
# Rows whose disk reads are printed: their number and average size show how a target's
# layout on the disk serves them.
DISK_ROWS = {"seqr_cold", "randr", "find"}
# Rows whose fsync the floor answers at once, where a store must reach the disk.
DURABLE_ROWS = {"append", "overwrite", "randover"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--daemon-pid", type=int, required=True)
    ap.add_argument("--daemon-url", required=True)
    ap.add_argument("--floor-us", type=float, required=True,
                    help="one FUSE round trip with nothing behind it (fuse-floor)")
    ap.add_argument("targets", nargs="+")
    a = ap.parse_args()
    targets = [t.split("=", 1) for t in a.targets]
    names = [n for n, _ in targets]
    size = f"{a.size_mib}M"
    rss = PeakRss(a.daemon_pid)
    stdlib, tree_files = make_inputs(a.work)
    results = {}  # workload -> {target: value}
    rows = []  # (key, label, unit, higher_is_better)
    requests = {}  # workload key -> (label, files, {op: requests})
    reads = {}  # read workload key -> {target: (disk reads, bytes)}
    committed = {}  # fsync workload key -> (commits, seconds) of the chaserfs daemon

    def workload(key, label, unit, higher, fn, cold=False, rss_label=None, files=None):
        rows.append((key, label, unit, higher))
        results[key] = {}
        for name, d in targets:
            if name == FLOOR and key not in FLOOR_ROWS:
                continue
            # Each target starts with nothing of the previous one's left to write back.
            if cold:
                drop_caches()
            else:
                os.sync()
            if rss_label and name == "chaserfs":
                rss.reset()
            if files and name == "chaserfs":
                before = fuse_requests(a.daemon_url)
            if key in DURABLE_ROWS and name == "chaserfs":
                commits_before = commits(a.daemon_url)
            reads_before = disk_reads(a.work) if key in DISK_ROWS and name != FLOOR else None
            try:
                results[key][name] = fn(d)
            except subprocess.CalledProcessError as e:
                if name == "native" or name.startswith("chaserfs"):
                    raise
                # A peer's own failure (fuse-overlayfs's rm -rf has answered ENOTEMPTY here)
                # leaves its cell empty, not the run without its table.
                print(f"  {label}: {name} failed: {e}", file=sys.stderr)
                continue
            if reads_before is not None:
                after = disk_reads(a.work)
                reads.setdefault(key, {})[name] = (after[0] - reads_before[0],
                                                   after[1] - reads_before[1])
            if key in DURABLE_ROWS and name == "chaserfs":
                n, secs = commits(a.daemon_url)
                committed[key] = (n - commits_before[0], secs - commits_before[1])
            if rss_label and name == "chaserfs":
                rss.read(rss_label)
            if files and name == "chaserfs":
                os.sync()  # what the kernel still holds to write back is part of the cost
                after = fuse_requests(a.daemon_url)
                requests[key] = (label, files, {op: n - before.get(op, 0)
                                                for op, n in after.items()
                                                if n > before.get(op, 0)})
            print(f"  {label}: {name} {results[key][name]:.4g} {unit}", file=sys.stderr)

    workload("seqw", f"sequential write {a.size_mib} MiB, 1 MiB blocks, fsync at end", "MB/s",
             True, lambda d: mbps(fio(d, "--rw=write", "--bs=1M", f"--size={size}",
                                      "--end_fsync=1", "--filename=seq")),
             rss_label="sequential write")
    workload("seqr_cold", "sequential read, cold", "MB/s", True,
             lambda d: mbps(fio(d, "--rw=read", "--bs=1M", f"--size={size}", "--filename=seq")),
             cold=True)
    def warm_read(d):
        # The other targets' cold reads dropped every cache: one pass to fill it, then measure.
        args = ["--rw=read", "--bs=1M", f"--size={size}", "--filename=seq", "--invalidate=0"]
        fio(d, *args)
        return mbps(fio(d, *args))

    workload("seqr_warm", "sequential read, warm", "MB/s", True, warm_read)
    for _, d in targets:
        os.unlink(os.path.join(d, "seq"))
        fio(d, "--rw=write", "--bs=1M", "--size=512M", "--filename=rand", "--end_fsync=1")
    workload("randr", "random 4 KiB read, 512 MiB file, 10 s", "IOPS", True,
             lambda d: iops(fio(d, "--rw=randread", "--bs=4k", "--size=512M", "--filename=rand",
                                "--runtime=10", "--time_based")))
    workload("randw", "random 4 KiB write, 512 MiB file, 10 s", "IOPS", True,
             lambda d: iops(fio(d, "--rw=randwrite", "--bs=4k", "--size=512M",
                                "--filename=rand", "--runtime=10", "--time_based")))
    for _, d in targets:
        os.unlink(os.path.join(d, "rand"))
        fio(d, "--rw=write", "--bs=1M", "--size=64M", "--filename=over", "--end_fsync=1")
    workload("append", "4 KiB append + fdatasync, per op", "ms", False,
             lambda d: 1000 / iops(fio(d, "--rw=write", "--bs=4k", "--size=1G",
                                       "--filename=append", "--fdatasync=1", "--runtime=5")))
    workload("overwrite", "4 KiB overwrite + fdatasync, per op", "ms", False,
             lambda d: 1000 / iops(fio(d, "--rw=write", "--bs=4k", "--size=64M",
                                       "--filename=over", "--overwrite=1", "--fdatasync=1",
                                       "--runtime=5")))
    # A database's pattern: pages rewritten in place at random, each synced.
    workload("randover", "4 KiB random overwrite + fdatasync, per op", "ms", False,
             lambda d: 1000 / iops(fio(d, "--rw=randwrite", "--bs=4k", "--size=64M",
                                       "--filename=over", "--overwrite=1", "--fdatasync=1",
                                       "--runtime=5")))
    for _, d in targets:
        os.unlink(os.path.join(d, "append"))
        os.unlink(os.path.join(d, "over"))
    workload("small", "create + stat + unlink, 30,000 files", "s", False,
             lambda d: timed(lambda: small_files(os.path.join(d, "small"), 30000)), files=30000)
    def untar(name, dest):
        os.makedirs(dest, exist_ok=True)
        return timed(lambda: sh("tar", "-xf", os.path.join(a.work, name), "-C", dest))

    workload("tiny", "tar -x of 20,000 tiny files", "s", False,
             lambda d: untar("tiny.tar", os.path.join(d, "tiny")), files=20000)
    workload("untar", f"untar of {tree_files:,} files (Python stdlib + site-packages)", "s",
             False, lambda d: untar("tree.tar", d), rss_label="untar")
    tree = os.path.basename(stdlib)
    workload("find", "find over that tree, cold", "s", False,
             lambda d: timed(lambda: sh("find", os.path.join(d, tree))), cold=True)
    workload("clone", "git clone of a 20,000-file repository", "s", False,
             lambda d: timed(lambda: sh("git", "clone", "-q", "--no-local",
                                        os.path.join(a.work, "repo"), os.path.join(d, "repo"))))
    for name, d in targets:
        if name != FLOOR:
            sh("git", "status", cwd=os.path.join(d, "repo"))  # warm the caches
    workload("status", "git status in that clone, warm", "s", False,
             lambda d: timed(lambda: sh("git", "status", cwd=os.path.join(d, "repo"))))
    workload("rm", "rm -rf of the untarred tree", "s", False,
             lambda d: timed(lambda: sh("rm", "-rf", os.path.join(d, tree))))

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(f"\n### Data path, same disk: {platform.node()}, {cpu}, {os.cpu_count()} vCPUs, "
          f"Linux {platform.release()}\n")
    print("Ratios are to native, oriented so that higher is better for the target.\n")
    print("| workload | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    base = names[0]
    for key, label, unit, higher in rows:
        cells = []
        for n in names:
            if n not in results[key]:
                cells.append("–")
                continue
            v = results[key][n]
            fig = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            if n == base:
                cells.append(f"{fig} {unit}")
            else:
                r = v / results[key][base] if higher else results[key][base] / v
                cells.append(f"{fig} ({r:.2f}x)")
        print(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
    print(f"\nFUSE round trip with nothing behind it (fuse-floor, this machine, this run): "
          f"{a.floor_us:.1f} µs.")
    print("FUSE requests per file, chaserfs (from the daemon's /metrics, writeback included; "
          "the floor is those requests at that round trip, against native's time):")
    for key, (label, files, ops) in requests.items():
        per_file = sum(ops.values()) / files
        by_op = ", ".join(f"{op} {n / files:.2f}" for op, n in
                          sorted(ops.items(), key=lambda kv: -kv[1]))
        floor = per_file * files * a.floor_us / 1e6
        native = results[key][names[0]]
        print(f"- {label}: {per_file:.2f} ({by_op}); floor {floor:.2f} s = "
              f"{floor / native:.1f}x native, measured {results[key]['chaserfs'] / native:.1f}x")
    if reads:
        print("\nDisk reads during the read rows (/proc/diskstats of the work dir's disk: "
              "requests, and their average size). A disk serves a sequential read in large "
              "requests; chaserfs's chunks lie in segment files in the order they were written "
              "(a store written before format 5 kept them in RocksDB's blob files in hash "
              "order: one request per 64 KiB chunk), and a random 4 KiB read of a chunk the "
              "page cache lacks reads the whole chunk (its pages only, once cached):")
        for key, label, _, _ in rows:
            if key in reads:
                print(f"- {label}: " + ", ".join(
                    f"{n} {count:,} of {nbytes / max(count, 1) / 1024:,.0f} KiB"
                    for n, (count, nbytes) in reads[key].items()))
    if committed:
        print("\nchaserfs commits during the fsync rows (/metrics; a commit seals every dirty "
              "64 KiB buffer and holds the workspace meanwhile):")
        for key, label, _, _ in rows:
            if key in committed:
                n, secs = committed[key]
                print(f"- {label}: {n} commits, {secs:.2f} s")
    if FLOOR in names:
        print(f"\n{FLOOR}: the same FUSE mount setup as a chaserfs session with nothing behind "
              "it (writes dropped, reads answer zeros, fsync answers at once): the least any FUSE "
              "filesystem pays here for a row without kernel passthrough. chaserfs against it:")
        for key, label, unit, higher in rows:
            if FLOOR not in results[key]:
                continue
            c, f = results[key]["chaserfs"], results[key][FLOOR]
            if key in DURABLE_ROWS:
                # A durable fsync reaches the disk as native's does, and crosses FUSE besides:
                # one after the other.
                native = results[key][names[0]]
                print(f"- {label}: the floor's FUSE time plus native's, {native + f:.3g} {unit}, "
                      f"is {(native + f) / native:.2f}x native; measured {c / native:.2f}x")
            else:
                print(f"- {label}: {(c / f if higher else f / c):.2f}x of the floor")
    print("\nchaserfs daemon peak RSS: " + ", ".join(
        f"{k} {v} MiB" for k, v in rss.peaks.items()))


if __name__ == "__main__":
    main()
