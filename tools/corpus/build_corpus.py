#!/usr/bin/python3
"""Builds the reference-model text corpus from Debian documentation packages, byte-identically.

Steps (all under --work, default <repo>/.corpus, which git ignores):
  1. `apt-get download NAME=VERSION` for each package of tools/corpus/packages.json into debs/
     (skipped when the file is already there), then checks the .deb's sha256 against the pinned one.
  2. `dpkg-deb -x` into extract/NAME/ (fresh each time; nothing is installed).
  3. Collects the documentation sources (reStructuredText *.rst.txt) under each package's `sources`
     directory, sorted by path; decodes UTF-8 (undecodable bytes become U+FFFD, counted in the
     manifest), turns CRLF into LF and strips trailing blank space at the end of each file.
  4. Splits BY FILE: key = "NAME/relative/path", h = int(sha256(key)[:16], 16) % 1000;
     h < 50 -> test, h < 80 -> validation, else train. So a file's split never depends on the
     others, and adding a package does not move existing files.
  5. Writes train.txt, validation.txt, test.txt (documents in path order joined with "\\n\\n", the
     WikiText convention of docs/spqr-method.md section 8), manifest.json (packages, versions,
     .deb and copyright sha256s, licenses, and every file with its split, bytes and sha256),
     licenses/NAME.copyright, and SHA256SUMS over the four outputs.

--check rebuilds and compares SHA256SUMS with the committed tools/corpus/MANIFEST.sha256 (exit 1 on
any difference). --update-committed writes that file from the current build.

Usage: /usr/bin/python3 tools/corpus/build_corpus.py [--work DIR] [--check | --update-committed]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PACKAGES = os.path.join(HERE, "packages.json")
COMMITTED_SUMS = os.path.join(HERE, "MANIFEST.sha256")
SPLITS = ("train", "validation", "test")
TEST_PERMILLE = 50
VALIDATION_PERMILLE = 30
MIN_TEST_BYTES = 1 << 20
OUTPUTS = ("train.txt", "validation.txt", "test.txt", "manifest.json")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_of(key):
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) % 1000
    if h < TEST_PERMILLE:
        return "test"
    if h < TEST_PERMILLE + VALIDATION_PERMILLE:
        return "validation"
    return "train"


def fetch_deb(pkg, debs_dir):
    os.makedirs(debs_dir, exist_ok=True)
    # apt names the file NAME_VERSION_ARCH.deb with ':' in the version escaped as %3a.
    prefix = f"{pkg['name']}_{pkg['version'].replace(':', '%3a')}_"
    found = [f for f in os.listdir(debs_dir) if f.startswith(prefix) and f.endswith(".deb")]
    if not found:
        subprocess.run(["apt-get", "download", f"{pkg['name']}={pkg['version']}"], cwd=debs_dir,
                       check=True)
        found = [f for f in os.listdir(debs_dir) if f.startswith(prefix) and f.endswith(".deb")]
    if len(found) != 1:
        sys.exit(f"error: expected one {prefix}*.deb in {debs_dir}, found {found}")
    path = os.path.join(debs_dir, found[0])
    digest = sha256_file(path)
    if digest != pkg["deb_sha256"]:
        sys.exit(f"error: {path}: sha256 {digest} != pinned {pkg['deb_sha256']} "
                 f"(tools/corpus/packages.json)")
    return path, digest


def collect(pkg, root):
    """Yields (relative path, normalized text, replacement count) for the package's sources."""
    base = os.path.join(root, pkg["sources"])
    if not os.path.isdir(base):
        sys.exit(f"error: {pkg['name']}: sources directory {pkg['sources']} not in the package")
    paths = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in pkg["exclude"]]
        for f in filenames:
            if f.endswith(pkg["suffix"]):
                paths.append(os.path.relpath(os.path.join(dirpath, f), base))
    for rel in sorted(paths):
        with open(os.path.join(base, rel), "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", errors="replace")
        replaced = text.count("\ufffd") - raw.count("\ufffd".encode("utf-8"))
        text = text.replace("\r\n", "\n").rstrip()
        if text:
            yield rel, text, replaced


def build(work):
    with open(PACKAGES) as f:
        packages = json.load(f)["packages"]
    docs = {s: [] for s in SPLITS}
    manifest = {
        "split_rule": f"sha256('NAME/relpath')[:16] as int % 1000: < {TEST_PERMILLE} test, "
                      f"< {TEST_PERMILLE + VALIDATION_PERMILLE} validation, else train",
        "document_separator": "\\n\\n",
        "packages": [],
        "files": [],
    }
    licenses_dir = os.path.join(work, "licenses")
    os.makedirs(licenses_dir, exist_ok=True)
    for pkg in packages:
        deb, deb_digest = fetch_deb(pkg, os.path.join(work, "debs"))
        root = os.path.join(work, "extract", pkg["name"])
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        copyright_path = os.path.join(root, pkg["copyright"])
        shutil.copyfile(copyright_path, os.path.join(licenses_dir, pkg["name"] + ".copyright"))
        counts = {s: [0, 0] for s in SPLITS}
        for rel, text, replaced in collect(pkg, root):
            key = f"{pkg['name']}/{rel}"
            split = split_of(key)
            data = text.encode("utf-8")
            docs[split].append(text)
            counts[split][0] += 1
            counts[split][1] += len(data)
            manifest["files"].append({"path": key, "split": split, "bytes": len(data),
                                      "sha256": sha256_bytes(data), "replaced_bytes": replaced})
        manifest["packages"].append({
            "name": pkg["name"], "version": pkg["version"], "deb": os.path.basename(deb),
            "deb_sha256": deb_digest, "license": pkg["license"],
            "copyright_file": "/" + pkg["copyright"],
            "copyright_sha256": sha256_file(copyright_path),
            "files": {s: counts[s][0] for s in SPLITS},
            "bytes": {s: counts[s][1] for s in SPLITS},
        })
    manifest["splits"] = {}
    for s in SPLITS:
        data = "\n\n".join(docs[s]).encode("utf-8") + b"\n"
        with open(os.path.join(work, s + ".txt"), "wb") as f:
            f.write(data)
        manifest["splits"][s] = {"files": len(docs[s]), "bytes": len(data),
                                 "sha256": sha256_bytes(data)}
    if manifest["splits"]["test"]["bytes"] < MIN_TEST_BYTES:
        sys.exit(f"error: test split has {manifest['splits']['test']['bytes']} bytes < 1 MiB")
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    sums = "".join(f"{sha256_file(os.path.join(work, o))}  {o}\n" for o in OUTPUTS)
    with open(os.path.join(work, "SHA256SUMS"), "w") as f:
        f.write(sums)
    for s in SPLITS:
        print(f"{s}: {manifest['splits'][s]['files']} files, {manifest['splits'][s]['bytes']} bytes")
    return sums


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(REPO, ".corpus"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="rebuild and compare with tools/corpus/MANIFEST.sha256")
    mode.add_argument("--update-committed", action="store_true",
                      help="write tools/corpus/MANIFEST.sha256 from this build")
    args = p.parse_args()
    sums = build(os.path.abspath(args.work))
    if args.update_committed:
        with open(COMMITTED_SUMS, "w") as f:
            f.write(sums)
        print(f"wrote {COMMITTED_SUMS}")
    elif args.check:
        with open(COMMITTED_SUMS) as f:
            want = f.read()
        if want != sums:
            print("corpus differs from tools/corpus/MANIFEST.sha256:\n--- committed\n" + want
                  + "--- rebuilt\n" + sums, file=sys.stderr)
            return 1
        print("corpus matches tools/corpus/MANIFEST.sha256")
    return 0


if __name__ == "__main__":
    sys.exit(main())
