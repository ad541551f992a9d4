"""Every value a user can type, given wrong: one clear line that names it, exit code 2, no traceback.

One row per mistake: the command line, the exit code, and a fragment of the message that names
the bad value. `{tmp}` is a fresh directory per row holding `afile` (a file), `foreign/` (a
non-empty directory that is not a run), `emptydata/` (no CIFAR inside) and, for rows that use
it, a journal study `s` created with TINY_STUDY's definition. Rows run in process through
`seratio.cli.main`, so the whole table takes seconds.

Commands that would start training get `--data-dir {tmp}/emptydata` unless data is the point:
should a check ever be lost, the row then fails fast instead of training.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from seratio.cli import main
from study_fakes import create

EMPTY = ["--data-dir", "{tmp}/emptydata"]
TRAIN = ["train", "--depth", "8", "--epochs", "1", "--out", "{tmp}/run", "--quiet"]
TINY_STUDY = ["constant", "--candidates", "4", "--depth", "8", "--batch-size", "64", "--train-subset", "200",
              "--test-subset", "500", "--val-size", "100", "--epochs", "1"]
"""The definition of study `s` in `{tmp}/study.log` (as study_fakes.TINY with candidates 4)."""
STUDY = ["study", "run", "constant", "--name", "x", "--storage", "journal:{tmp}/j.log", "--epochs", "1", *EMPTY,
         "--db-patience", "1"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    code: int
    says: str  # a fragment of the output that names the bad value


CASES = [
    # reduction ratios
    Case("rr wrong stage count", ["info", "--rr", "8,2"], 2, "'8,2' give 2 stages; the model has 3"),
    Case("rr zero", ["info", "--rr", "0"], 2, "stage 1: reduction ratio 0 is < 1"),
    Case("rr not an integer", ["info", "--rr", "8,x,16"], 2, "stage 2: reduction ratio 'x' is not an integer"),
    Case("rr negative", ["info", "--rr", "8,2,-16"], 2, "stage 3: reduction ratio -16 is < 1"),
    Case("rr fraction", ["info", "--rr", "2.5"], 2, "stage 1: reduction ratio '2.5' is not an integer"),
    Case("rr empty", ["info", "--rr", ""], 2, "stage 1: reduction ratio '' is not an integer"),
    Case("rr full-width digit", ["info", "--rr", "\uff18,2,16"], 2, "stage 1: reduction ratio '\uff18' is not an integer"),
    Case("rr with underscore", ["info", "--rr", "8,1_6,2"], 2, "stage 2: reduction ratio '1_6' is not an integer"),
    Case("rr with plus", ["info", "--rr", "8,2,+16"], 2, "stage 3: reduction ratio '+16' is not an integer"),
    Case("rr gives width 0", ["info", "--rr", "32,2,16"], 2, "stage 1 has 16 channels; ratio 32 gives SE hidden width 16 // 32 = 0"),
    Case("train rr stage count", [*TRAIN, "--rr", "4,4", *EMPTY], 2, "'4,4' give 2 stages"),
    # depth and classes
    Case("depth not 6n+2", ["info", "--depth", "51"], 2, "depth 51 is not 6n+2"),
    Case("depth too small", ["info", "--depth", "2"], 2, "depth 2 is not 6n+2"),
    Case("depth not a number", ["info", "--depth", "fifty"], 2, "invalid int value: 'fifty'"),
    Case("train depth not 6n+2", [*TRAIN, "--depth", "10", *EMPTY], 2, "depth 10 is not 6n+2"),
    Case("classes below 2", ["info", "--classes", "1"], 2, "number of classes 1 must be"),
    Case("classes beyond any dataset", ["info", "--classes", "10000000000000000000000"], 2,
         "number of classes 10000000000000000000000 must be an integer from 2 to 100000"),
    # training options
    Case("dataset unknown", [*TRAIN, "--dataset", "mnist", *EMPTY], 2, "unknown dataset 'mnist'; allowed: cifar10, cifar100"),
    Case("recipe unknown", [*TRAIN, "--recipe", "slow", *EMPTY], 2, "unknown recipe 'slow'; allowed: paper, fast"),
    Case("seed negative", [*TRAIN, "--seed", "-1", *EMPTY], 2, "seed -1 must be an integer from 0 to 4294967295"),
    Case("seed fraction", [*TRAIN, "--seed", "1.5", *EMPTY], 2, "argument --seed: invalid int value: '1.5'"),
    Case("epochs zero", [*TRAIN, "--epochs", "0", *EMPTY], 2, "epochs 0 must be an integer from 1 to 10,000"),
    Case("epochs huge", [*TRAIN, "--epochs", "99999999999999999999", *EMPTY], 2, "epochs 99999999999999999999 must be an integer from 1 to 10,000"),
    Case("batch size zero", [*TRAIN, "--batch-size", "0", *EMPTY], 2, "batch size 0 must be an integer from 1 to 60,000"),
    Case("batch size huge", [*TRAIN, "--batch-size", "60001", *EMPTY], 2, "batch size 60001 must be an integer from 1 to 60,000"),
    Case("batch size negative", [*TRAIN, "--batch-size", "-32", *EMPTY], 2, "batch size -32 must be"),
    Case("lr negative", [*TRAIN, "--lr", "-1", *EMPTY], 2, "learning rate -1.0 must be a finite number > 0 and <= 1e+06"),
    Case("lr nan", [*TRAIN, "--lr", "nan", *EMPTY], 2, "learning rate nan must be a finite number > 0 and <= 1e+06"),
    Case("lr beyond any recipe", [*TRAIN, "--lr", "1e308", *EMPTY], 2, "learning rate 1e+308 must be a finite number > 0 and <= 1e+06"),
    Case("lr not a number", [*TRAIN, "--lr", "fast", *EMPTY], 2, "argument --lr: invalid float value: 'fast'"),
    Case("precision unknown", [*TRAIN, "--precision", "fp16", *EMPTY], 2, "precision 'fp16' is not one of auto, fp32, bf16"),
    Case("device unknown", [*TRAIN, "--device", "tpu", *EMPTY], 2, "device 'tpu' is not valid"),
    Case("device index malformed", [*TRAIN, "--device", "cuda:x", *EMPTY], 2, "device 'cuda:x' is not valid"),
    Case("device not present", [*TRAIN, "--device", "cuda:99", *EMPTY], 2, "device 'cuda:99'"),
    Case("split seed negative", [*TRAIN, "--split-seed", "-3", *EMPTY], 2, "split seed -3 must be an integer from 0 to 4294967295"),
    Case("val size negative", [*TRAIN, "--val-size", "-1", *EMPTY], 2, "val size -1 must be an integer from 0 to 49,990"),
    Case("val size whole train set", [*TRAIN, "--val-size", "50000", *EMPTY], 2, "val size 50000 must be an integer from 0 to 49,990 (it leaves at least one training image per class of the 50,000)"),
    Case("val size not a number", [*TRAIN, "--val-size", "abc", *EMPTY], 2, "argument --val-size: invalid int value: 'abc'"),
    Case("train subset below classes", [*TRAIN, "--train-subset", "5", *EMPTY], 2, "train subset 5 must be an integer from 10 (one image per class) to 45,000 (the training images left after a val size of 5,000)"),
    Case("train subset too large", [*TRAIN, "--train-subset", "99999", *EMPTY], 2, "train subset 99999 must be an integer from 10"),
    Case("test subset below classes", [*TRAIN, "--test-subset", "5", *EMPTY], 2, "test subset 5 must be an integer from 10 (one image per class) to 10,000"),
    Case("test subset too large", [*TRAIN, "--test-subset", "10001", *EMPTY], 2, "test subset 10001 must be an integer from 10 (one image per class) to 10,000"),
    Case("val size leaves a class no image", [*TRAIN, "--val-size", "49995", "--train-subset", "5", *EMPTY], 2,
         "val size 49995 must be an integer from 0 to 49,990"),
    Case("seed beyond 32 bits", [*TRAIN, "--seed", "4294967296", *EMPTY], 2, "seed 4294967296 must be an integer from 0 to 4294967295"),
    Case("depth beyond the largest", ["info", "--depth", "3008"], 2, "depth 3008 is not 6n+2 with 1 <= n <= 500"),
    Case("option abbreviated", [*STUDY, "--seed", "5"], 2, "unrecognized arguments: --seed 5"),
    Case("threads far beyond the cores", [*TRAIN, "--threads", "99999", *EMPTY], 2, "--threads 99999 must be <= "),
    # paths
    Case("data dir missing", [*TRAIN, "--data-dir", "{tmp}/nowhere"], 2, "CIFAR-10 not found: {tmp}/nowhere"),
    Case("data dir without CIFAR", [*TRAIN, *EMPTY], 2, "CIFAR-10 not found: {tmp}/emptydata"),
    Case("data dir empty", [*TRAIN, "--data-dir", ""], 2, "argument --data-dir: '' names no file or directory"),
    Case("data dir is a file", [*TRAIN, "--data-dir", "{tmp}/afile"], 2, "{tmp}/afile (from --data-dir / data_dir) is a file, not a directory"),
    Case("study data dir without CIFAR", STUDY, 2, "CIFAR-10 not found: {tmp}/emptydata"),
    Case("worker data dir without CIFAR", ["study", "worker", "--name", "s", "--storage", "journal:{tmp}/study.log", *EMPTY], 2,
         "CIFAR-10 not found: {tmp}/emptydata"),
    Case("data dir without CIFAR-100", [*TRAIN, "--dataset", "cifar100", "--data-dir", "{data}"], 2, "CIFAR-100 not found: {data}"),
    Case("out dir is a file", [*TRAIN[:-3], "--out", "{tmp}/afile", *EMPTY], 2, "run directory {tmp}/afile is a file"),
    Case("out dir under a file", [*TRAIN[:-3], "--out", "{tmp}/afile/run", *EMPTY], 2, "cannot create run directory {tmp}/afile/run"),
    Case("out empty", [*TRAIN[:-3], "--out", "", *EMPTY], 2, "argument --out: '' names no file or directory"),
    Case("out name too long", [*TRAIN[:-3], "--out", "{tmp}/" + "x" * 300, *EMPTY], 2, "File name too long"),
    Case("out dir foreign and not empty", [*TRAIN[:-3], "--out", "{tmp}/foreign", *EMPTY], 2,
         "{tmp}/foreign is not empty and holds no seratio run"),
    # storage URLs
    Case("storage unknown scheme", [*STUDY[:5], "--storage", "mongodb://h/x", *STUDY[7:]], 2, "--storage 'mongodb://h/x' is not understood"),
    Case("storage mysql", [*STUDY[:5], "--storage", "mysql://h/x", *STUDY[7:]], 2, "--storage 'mysql://h/x' is not understood"),
    Case("storage journal a directory", [*STUDY[:5], "--storage", "journal:{tmp}/foreign", *STUDY[7:]], 2,
         "journal file '{tmp}/foreign' from --storage 'journal:{tmp}/foreign' is not a regular file"),
    Case("storage journal not a journal", ["study", "status", "--name", "s", "--storage", "journal:{tmp}/afile"], 2,
         "journal file '{tmp}/afile' from --storage 'journal:{tmp}/afile' is not an Optuna journal"),
    Case("storage sqlite of another program", ["study", "status", "--name", "s", "--storage", "sqlite:///{tmp}/other.db"], 2,
         "SQLite file '{tmp}/other.db' from --storage 'sqlite:///{tmp}/other.db' holds another program's tables (notes)"),
    Case("storage sqlite not a database", ["study", "status", "--name", "s", "--storage", "sqlite:///{tmp}/afile"], 2,
         "SQLite file '{tmp}/afile' from --storage 'sqlite:///{tmp}/afile' is not a SQLite database"),
    Case("storage sqlite damaged", ["study", "status", "--name", "s", "--storage", "sqlite:///{tmp}/damaged.db"], 2,
         "SQLite file '{tmp}/damaged.db' from --storage 'sqlite:///{tmp}/damaged.db' is damaged (database disk image is malformed)"),
    Case("storage sqlite empty", ["study", "status", "--name", "s", "--storage", "sqlite:///{tmp}/empty.db"], 2,
         "SQLite file '{tmp}/empty.db' from --storage 'sqlite:///{tmp}/empty.db' is empty: it holds no study yet"),
    Case("storage sqlite in missing dir", [*STUDY[:5], "--storage", "sqlite:///{tmp}/nodir/x.db", *STUDY[7:]], 2, "{tmp}/nodir/x.db"),
    Case("storage journal without path", [*STUDY[:5], "--storage", "journal:", *STUDY[7:]], 2, "--storage 'journal:' names no journal file"),
    Case("storage journal in missing dir", [*STUDY[:5], "--storage", "journal:{tmp}/nodir/j.log", *STUDY[7:]], 2, "{tmp}/nodir/j.log"),
    Case("storage journal under a file", [*STUDY[:5], "--storage", "journal:{tmp}/afile/j.log", *STUDY[7:]], 2, "{tmp}/afile/j.log"),
    Case("storage postgres port closed", [*STUDY[:5], "--storage", "postgresql://postgres@127.0.0.1:1/x", *STUDY[7:-4], "--data-dir", "{data}", *STUDY[-2:]], 2,
         'connection to server at "127.0.0.1", port 1 failed'),
    Case("storage postgres host unknown", [*STUDY[:5], "--storage", "postgresql://postgres@nonexistent.invalid/x", *STUDY[7:-4], "--data-dir", "{data}", *STUDY[-2:]], 2,
         '"nonexistent.invalid"'),
    Case("storage postgres port not a number", ["study", "status", "--name", "s", "--storage", "postgresql://u@127.0.0.1:abc/x"], 2,
         "--storage 'postgresql://u@127.0.0.1:abc/x' is not a valid PostgreSQL URL"),
    Case("storage postgres port out of range", ["study", "status", "--name", "s", "--storage", "postgresql://u@127.0.0.1:99999/x"], 2,
         "--storage 'postgresql://u@127.0.0.1:99999/x' names port 99999; a TCP port is 1 to 65535"),
    Case("storage postgres unknown option", ["study", "status", "--name", "s", "--storage", "postgresql://u:secret@127.0.0.1:1/x?foo=1"], 2,
         "--storage 'postgresql://u:***@127.0.0.1:1/x?foo=1' cannot be used: invalid dsn: invalid connection option \"foo\""),
    Case("storage postgres bad sslmode", ["study", "status", "--name", "s", "--storage", "postgresql://u@127.0.0.1:1/x?sslmode=bogus"], 2,
         "--storage 'postgresql://u@127.0.0.1:1/x?sslmode=bogus' cannot be used: invalid sslmode value"),
    Case("storage sqlite in memory", [*STUDY[:5], "--storage", "sqlite:///:memory:", *STUDY[7:]], 2,
         "--storage 'sqlite:///:memory:' is an in-memory SQLite database"),
    Case("export over its own storage", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.json", "--out",
                                         "{tmp}/study.json", "--force"], 2,
         "--out '{tmp}/study.json' is the file the study itself lives in (--storage 'journal:{tmp}/study.json')"),
    Case("worker storage journal missing", ["study", "worker", "--name", "x", "--storage", "journal:{tmp}/nope.log"], 2,
         "journal file '{tmp}/nope.log'"),
    Case("worker storage sqlite missing", ["study", "worker", "--name", "x", "--storage", "sqlite:///{tmp}/nope.db"], 2,
         "SQLite file '{tmp}/nope.db'"),
    # study options
    Case("strategy unknown", ["study", "run", "nonsense", *STUDY[3:]], 2, "invalid choice: 'nonsense'"),
    Case("candidates not integers", [*STUDY, "--candidates", "2,x"], 2, "--candidates '2,x' must be comma-separated integers"),
    Case("grid too many seeds", ["study", "run", "grid", *STUDY[3:], "--seeds", "1000"], 2,
         "--candidates 2,4,8,16,32 give grid 100 combinations, 100,000 runs with 1000 seed(s); at most 10,000"),
    Case("paper with another baseline", ["study", "run", "paper", *STUDY[3:], "--baseline", "8,8,8"], 2,
         "the paper preset compares against the plain ResNet, not --baseline 8,8,8"),
    Case("grid too large", ["study", "run", "grid", *STUDY[3:], "--candidates", ",".join(map(str, range(1, 33)))], 2,
         "give grid 16,384 combinations, 16,384 runs with 1 seed(s); at most 10,000"),
    Case("candidates with plus", [*STUDY, "--candidates", "2,+4"], 2, "--candidates '2,+4' must be comma-separated integers"),
    Case("candidate zero", [*STUDY, "--candidates", "0,2"], 2, "candidate ratio 0 must be an integer >= 1"),
    Case("candidate too large everywhere", [*STUDY, "--candidates", "128"], 2, "candidate ratio 128 gives SE hidden width 0"),
    Case("candidates repeated", [*STUDY, "--candidates", "2,2"], 2, "--candidates 2,2 repeats a ratio"),
    Case("seeds zero", [*STUDY, "--seeds", "0"], 2, "--seeds 0 must be an integer from 1 to 1000"),
    Case("workers zero", [*STUDY, "--workers", "0"], 2, "--workers 0 must be >= 1"),
    Case("workers far beyond the cores", [*STUDY, "--workers", "99999"], 2, "--workers 99999 must be <= "),
    Case("seeds beyond any study", [*STUDY, "--seeds", "1001"], 2, "--seeds 1001 must be an integer from 1 to 1000"),
    Case("n-trials beyond any study", ["study", "run", "tpe", *STUDY[3:], "--n-trials", "99999999999999999999"], 2,
         "--n-trials 99999999999999999999 must be an integer from 1 to 10000"),
    Case("study name a path", [*STUDY[:3], "--name", "../x", *STUDY[5:]], 2, "argument --name: '../x' is not a study name"),
    Case("study name too long", [*STUDY[:3], "--name", "n" * 256, *STUDY[5:]], 2, "at most 255 bytes"),
    Case("study name empty", [*STUDY[:3], "--name", " ", *STUDY[5:]], 2, "argument --name: ' ' is not a study name"),
    Case("study name with a newline", [*STUDY[:3], "--name", "a\nb", *STUDY[5:]], 2, "argument --name: 'a\\nb' is not a study name"),
    Case("report artifacts missing", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/report",
                                       "--artifacts", "{tmp}/typo"], 2, "--artifacts '{tmp}/typo' is not a directory on this machine"),
    Case("report study name empty", ["report", "--name", "", "--out", "{tmp}/report"], 2, "argument --name: '' is not a study name"),
    Case("artifacts empty", [*STUDY, "--artifacts", ""], 2, "argument --artifacts: '' names no file or directory"),
    Case("heartbeat interval beyond a week", [*STUDY, "--heartbeat-interval", "1e10", "--stale-after", "3e10"], 2,
         "--heartbeat-interval 1e+10 must be > 0 and at most 604800 s"),
    Case("heartbeat interval nan", [*STUDY, "--heartbeat-interval", "nan"], 2, "--heartbeat-interval nan must be > 0"),
    Case("status sqlite url with three slashes before an absolute path", ["study", "status", "--name", "s", "--storage", "sqlite://{tmp}/nope.db"], 2,
         "(sqlite:/// is followed by a relative path; for the absolute path '{tmp}/nope.db' write sqlite:///{tmp}/nope.db)"),
    Case("status db patience nan", ["study", "status", "--name", "s", "--storage", "journal:{tmp}/study.log", "--db-patience", "nan"], 2,
         "--db-patience nan must be >= 0 seconds"),
    Case("sqlite with parallel workers", [*STUDY[:5], "--storage", "sqlite:///{tmp}/s.db", *STUDY[7:], "--workers", "2"], 2,
         "--workers 2 asks for 2 parallel workers"),
    Case("trials per device zero", [*STUDY, "--trials-per-device", "0"], 2, "--trials-per-device 0 must be >= 1"),
    Case("workers and trials per device", [*STUDY, "--workers", "2", "--trials-per-device", "2"], 2,
         "argument --trials-per-device: not allowed with argument --workers"),
    Case("select-on unknown", [*STUDY, "--select-on", "train"], 2, "argument --select-on: invalid choice: 'train'"),
    Case("select-on val without val split", [*STUDY, "--val-size", "0"], 2, "--select-on val needs a validation split"),
    Case("baseline bad ratio", [*STUDY, "--baseline", "8,0,8"], 2, "stage 2: reduction ratio 0 is < 1"),
    Case("tpe without n-trials", ["study", "run", "tpe", *STUDY[3:]], 2, "tpe needs --n-trials N"),
    Case("n-trials zero", ["study", "run", "tpe", *STUDY[3:], "--n-trials", "0"], 2, "--n-trials 0 must be an integer from 1 to 10000"),
    Case("halving min epochs at the last epoch",
         ["study", "run", "halving", *STUDY[3:], "--epochs", "4", "--halving-min-epochs", "4"], 2,
         "--halving-min-epochs 4 must be in 1..3 (its first cut comes before the last"),
    Case("halving min epochs on grid", ["study", "run", "grid", *STUDY[3:], "--halving-min-epochs", "1"], 2,
         "--halving-min-epochs applies to the halving strategy only, not 'grid'"),
    Case("greedy candidates with no ratio for every stage", ["study", "run", "greedy", *STUDY[3:], "--candidates", "32"], 2,
         "the greedy strategy's constant phase needs: stage channels (16, 32, 64) allow ratios <= 16 in all three"),
    Case("halving of one epoch", ["study", "run", "halving", *STUDY[3:]], 2,
         "halving prunes between epochs, so it needs --epochs >= 2, not 1"),
    Case("candidates leaving a stage empty", ["study", "run", "grid", *STUDY[3:], "--candidates", "32"], 2,
         "--candidates 32 leave stage 1 no ratio (an SE block on c channels needs r <= c; channels (16, 32, 64))"),
    Case("paper preset with other recipe", ["study", "run", "paper", *STUDY[3:], "--recipe", "fast"], 2, "not 'fast'; use 'greedy'"),
    Case("heartbeat interval zero", [*STUDY, "--heartbeat-interval", "0"], 2, "--heartbeat-interval 0 must be > 0"),
    Case("stale-after below heartbeat", [*STUDY, "--stale-after", "1", "--heartbeat-interval", "5"], 2,
         "--stale-after 1 must be at least 3 heartbeats (--heartbeat-interval 5)"),
    Case("db patience negative", [*STUDY[:-2], "--db-patience", "-5"], 2, "--db-patience -5 must be >= 0"),
    Case("artifacts root is a file", [*STUDY, "--artifacts", "{tmp}/afile"], 2, "--artifacts '{tmp}/afile' is a file"),
    Case("study device unknown", [*STUDY, "--device", "tpu"], 2, "device 'tpu' is not valid"),
    Case("worker device unknown", ["study", "worker", "--name", "s", "--storage", "journal:{tmp}/study.log", "--device", "tpu"], 2,
         "device 'tpu' is not valid"),
    Case("study dataset unknown", [*STUDY, "--dataset", "svhn"], 2, "unknown dataset 'svhn'"),
    Case("study val size negative", [*STUDY, "--val-size", "-4"], 2, "val size -4 must be an integer from 0"),
    Case("study joined with another definition",
         ["study", "run", *TINY_STUDY[:-1], "2", "--name", "s", "--storage", "journal:{tmp}/study.log", "--data-dir", "{data}"], 2,
         "study 's' exists with a different definition (epochs: stored 1, asked 2"),
    Case("paper preset holds out no validation images by default",
         ["study", "run", "paper", "--depth", "8", "--batch-size", "64", "--train-subset", "200", "--test-subset", "500",
          "--epochs", "1", "--name", "s", "--storage", "journal:{tmp}/study.log", "--data-dir", "{data}"], 2,
         "val_size: stored 100, asked 0"),
    Case("worker threads zero", ["study", "worker", "--name", "s", "--storage", "journal:{tmp}/study.log", "--threads", "0"], 2,
         "--threads 0 must be >= 1"),
    Case("train threads zero", [*TRAIN, "--threads", "0", *EMPTY], 2, "--threads 0 must be >= 1"),
    Case("study run threads negative", [*STUDY, "--threads", "-2"], 2, "--threads -2 must be >= 1"),
    Case("evaluate threads zero", ["evaluate", "{tmp}/foreign", "--threads", "0"], 2, "--threads 0 must be >= 1"),
    Case("worker trials per device zero", ["study", "worker", "--name", "s", "--storage", "journal:{tmp}/study.log", "--trials-per-device", "0"], 2,
         "--trials-per-device 0 must be >= 1"),
    Case("worker trials per device on sqlite", ["study", "worker", "--name", "s", "--storage", "sqlite:///{tmp}/s.db", "--trials-per-device", "3"], 2,
         "--trials-per-device 3 asks for 3 parallel workers"),
    Case("worker study unknown", ["study", "worker", "--name", "nope", "--storage", "journal:{tmp}/study.log"], 2,
         "no study named 'nope' in this storage; studies there: s"),
    Case("status postgres port closed", ["study", "status", "--name", "s", "--storage", "postgresql://postgres@127.0.0.1:1/x", "--db-patience", "0"], 2,
         'connection to server at "127.0.0.1", port 1 failed'),
    Case("export db-patience negative", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/x.csv", "--db-patience", "-1"], 2,
         "--db-patience -1 must be >= 0 seconds"),
    Case("report postgres port closed", ["report", "--name", "s", "--storage", "postgresql://postgres@127.0.0.1:1/x", "--out", "{tmp}/r", "--db-patience", "0"], 2,
         'connection to server at "127.0.0.1", port 1 failed'),
    Case("status study unknown", ["study", "status", "--name", "nope", "--storage", "journal:{tmp}/study.log"], 2, "no study named 'nope'"),
    Case("export out in a missing folder", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out",
                                            "{tmp}/nowhere/x.csv"], 2, "--out '{tmp}/nowhere/x.csv': its folder '{tmp}/nowhere' does not exist"),
    Case("export out under a file", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/afile/x.csv"], 2,
         "--out '{tmp}/afile/x.csv': its folder '{tmp}/afile' does not exist or is not a folder"),
    Case("export out exists", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/old.csv"], 2,
         "--out '{tmp}/old.csv' already exists and is a file; pass --force to replace it"),
    Case("export out a dangling symlink", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/gone.csv"], 2,
         "--out '{tmp}/gone.csv' already exists and is not a file"),
    Case("export out a directory with --force", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/d.csv", "--force"], 2,
         "--out '{tmp}/d.csv' already exists and is not a file"),
    Case("export suffix unknown", ["study", "export", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/x.txt"], 2,
         "--out '{tmp}/x.txt' must be a file name ending in .csv or .json"),
    # reports and comparisons
    Case("report format empty", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r", "--format", ","], 2,
         "--format ',' names no format; allowed, comma-separated: md"),
    Case("report format unknown", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r", "--format", "pdf"], 2,
         "--format 'pdf': unknown format pdf"),
    Case("report baseline bad", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r", "--baseline", "4,x,4"], 2,
         "stage 2: reduction ratio 'x' is not an integer"),
    Case("report baseline never measured", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r", "--baseline", "8,8,8"], 2,
         "--baseline 8,8,8: study 's' has no completed comparable run of it; configurations with results: none yet"),
    Case("option typo in a subcommand", ["study", "run", "constant", "--name", "x", "--seed", "3"], 2,
         "seratio study run: error: unrecognized arguments: --seed 3; did you mean --seeds?"),
    Case("abbreviated option", ["train", "--rr", "8", "--ep", "1", "--out", "{tmp}/abbr"], 2,
         "seratio train: error: unrecognized arguments: --ep 1; did you mean --epochs?"),
    Case("abbreviation of two options", ["train", "--rr", "8", "--s", "1", "--out", "{tmp}/abbr"], 2,
         "seratio train: error: unrecognized arguments: --s 1; did you mean --seed or --split-seed?"),
    Case("two unknown options", ["train", "--rr", "8", "--val", "5", "--test", "5", "--out", "{tmp}/abbr"], 2,
         "unrecognized arguments: --val 5 --test 5; did you mean --val-size for --val, --test-subset for --test?"),
    Case("a bare double dash with a value", ["train", "--rr", "8", "--=", "3", "--out", "{tmp}/abbr"], 2,
         "unrecognized arguments: --= 3; seratio train -h lists what it takes"),
    Case("words after --", ["info", "--rr", "4", "--", "--ep"], 2,
         "seratio info: error: unrecognized arguments: -- --ep; seratio info -h lists what it takes"),
    Case("stray argument", ["info", "--rr", "4", "extra"], 2,
         "seratio info: error: unrecognized arguments: extra; seratio info -h lists what it takes"),
    Case("report study without results", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r"], 2,
         "study 's' has no finished run to report (no trials yet); `seratio study status --name s --storage journal:{tmp}/study.log` shows where it stands"),
    Case("report study unknown", ["report", "--name", "nope", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/r"], 2,
         "no study named 'nope'"),
    Case("report out empty", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", ""], 2,
         "argument --out: '' names no file or directory"),
    Case("report out is a file", ["report", "--name", "s", "--storage", "journal:{tmp}/study.log", "--out", "{tmp}/afile"], 2,
         "{tmp}/afile"),
    Case("compare dirs that are not runs", ["compare", "{tmp}/foreign", "{tmp}/emptydata"], 2,
         "{tmp}/foreign is neither a run directory (no config.json or result.json) nor a folder of runs"),
    Case("compare a run with itself", ["compare", "{tmp}/foreign", "{tmp}/foreign/"], 2,
         "{tmp}/foreign and {tmp}/foreign are the same run directory"),
    Case("compare missing dir", ["compare", "{tmp}/nowhere", "{tmp}/foreign"], 2, "run directory '{tmp}/nowhere' does not exist"),
    Case("compare a file", ["compare", "{tmp}/afile", "{tmp}/foreign"], 2,
         "run directory '{tmp}/afile' is a file"),
    Case("evaluate an empty path", ["evaluate", ""], 2, "argument RUN_DIR: '' names no file or directory"),
    Case("compare an empty path", ["compare", "", "{tmp}/foreign"], 2, "argument A: '' names no file or directory"),
    Case("evaluate missing dir", ["evaluate", "{tmp}/nowhere"], 2, "run directory '{tmp}/nowhere' does not exist"),
    Case("evaluate a file", ["evaluate", "{tmp}/afile"], 2, "run directory '{tmp}/afile' is a file"),
    Case("evaluate a dir that is not a run", ["evaluate", "{tmp}/foreign"], 2,
         "{tmp}/foreign holds no config.json, so it is not a seratio run"),
    Case("evaluate tta unknown", ["evaluate", "{tmp}/foreign", "--tta", "flip-crop"], 2,
         "invalid choice: 'flip-crop' (choose from 'none', 'flip', 'flip-shift')"),
]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone else's\n")
    (tmp_path / "emptydata").mkdir()
    (tmp_path / "old.csv").write_text("an earlier export\n")
    (tmp_path / "d.csv").mkdir()
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as other:
        other.execute("CREATE TABLE notes (text)")
    _damaged_database(tmp_path / "damaged.db")
    (tmp_path / "empty.db").touch()
    return tmp_path


def _damaged_database(path: Path) -> None:
    """A study database whose pages after the first two were overwritten, as a bad disk or copy leaves one."""
    with contextlib.closing(sqlite3.connect(path)) as database:
        database.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        database.executemany("INSERT INTO studies (study_name) VALUES (?)", [(f"s{i}" * 40,) for i in range(200)])
        database.commit()
    with path.open("r+b") as handle:
        handle.seek(2 * 4096)
        handle.write(b"\xff" * 3 * 4096)


def _run(argv: list[str]) -> tuple[int, str]:
    """Exit code and everything printed; argparse's own errors exit via SystemExit(2)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = int(exit.code or 0)
    return code, err.getvalue() + out.getvalue()


def test_the_table_is_large_and_unique() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_a_message_that_names_it(
    case: Case, sandbox: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich would wrap long paths at 80 columns
    fill = {"tmp": str(sandbox), "data": str(cifar_dir)}
    argv = [arg.format(**fill) for arg in case.argv]
    for journal in ("study.log", "study.json"):
        if f"journal:{{tmp}}/{journal}" in case.argv:
            create(f"journal:{sandbox / journal}", "s", "constant", sandbox / "runs", candidates=(4,))
    code, output = _run(argv)
    assert "Traceback" not in output, output
    assert code == case.code, output
    assert case.says.format(**fill) in output, output
    assert "usage:" not in output, output  # argparse's usage block once stood above the message, up to 18 lines
    assert not (sandbox / "run" / "config.json").exists(), "a refused run must not have started"
    assert sorted(path.name for path in (sandbox / "foreign").iterdir()) == ["notes.txt"], "a refusal leaves no trace"
    assert _studies(sandbox / "j.log") == [], "a refused study must not have been created"


def _studies(journal: Path) -> list[str]:
    if not journal.exists():
        return []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return [study.study_name for study in storage.get_all_studies()]


def test_an_artifacts_folder_that_cannot_be_written_is_refused_before_the_study_exists(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root writes anywhere, so the kernel's refusal of a read-only mount or a folder of another user
    is imitated; the study was created before, and then every trial failed on Permission denied."""
    locked = sandbox / "locked"
    locked.mkdir()
    _refuse_writes(locked, monkeypatch)
    argv = [arg.format(tmp=sandbox) for arg in STUDY] + ["--artifacts", str(locked / "runs")]
    code, output = _run(argv)
    assert code == 2, output
    assert f"--artifacts '{locked / 'runs'}' cannot hold the study's runs: {locked} is not writable" in output
    assert _studies(sandbox / "j.log") == []


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_read_only_study_file_is_refused_by_name_before_a_worker_starts(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A store that cannot be written failed at the first write, mid-study (SQLite said only 'attempt
    to write a readonly database'); root writes anywhere, so the kernel's refusal is imitated."""
    store = sandbox / "study.log"
    create(f"journal:{store}", "s", "constant", sandbox / "runs", candidates=(4,))
    _refuse_writes(store, monkeypatch)
    argv = ["study", command, *TINY_STUDY[:1]] if command == "run" else ["study", command]
    argv += ["--name", "s", "--storage", f"journal:{store}", *(TINY_STUDY[1:] if command == "run" else [])]
    code, output = _run([*argv, "--data-dir", str(sandbox / "emptydata")])
    assert code == 2, output
    assert f"--storage 'journal:{store}': the file '{store}' is read-only, and a worker writes to its study" in output


def test_a_new_study_file_in_a_read_only_folder_is_refused_by_name(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite said only 'unable to open database file'."""
    locked = sandbox / "locked"
    locked.mkdir()
    _refuse_writes(locked, monkeypatch)
    url = f"sqlite:///{locked / 'new.db'}"
    code, output = _run(["study", "run", *TINY_STUDY, "--name", "s", "--storage", url, "--data-dir", str(sandbox / "emptydata")])
    assert code == 2, output
    assert f"--storage '{url}': the folder '{locked}' is read-only" in output
    assert not (locked / "new.db").exists()


def _refuse_writes(refused: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's answer for a read-only mount or another user's folder, which root never gets."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != refused and real_access(path, mode))


def test_a_forgotten_storage_says_the_sqlite_file_was_only_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study lives in a journal, and --storage was left out: the relative-path hint for sqlite:///
    used to fire here ('/seratio.db'), pointing the wrong way."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    for argv in (["study", "status", "--name", "s"], ["report", "--name", "s", "--out", "r"]):
        code, output = _run(argv)
        assert code == 2 and "SQLite file 'seratio.db' from --storage 'sqlite:///seratio.db' does not exist" in output
        assert "that is the default --storage: pass --storage with the URL the study was created with" in output
        assert "absolute path" not in output


def test_a_journal_given_as_a_sqlite_url_says_to_use_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    create(f"journal:{tmp_path / 'g1.journal'}", "s", "constant", tmp_path / "runs", candidates=(4,))
    code, output = _run(["study", "status", "--name", "s", "--storage", f"sqlite:///{tmp_path / 'g1.journal'}"])
    assert code == 2 and "is not a SQLite database; it looks like an Optuna journal: use --storage journal:" in output
