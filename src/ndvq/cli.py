"""The `ndvq` command: argument parsing and error reporting around the Python API."""

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
import logging
import math
import os
from pathlib import Path
import signal
import sys
import threading
import time
from typing import NoReturn

import torch
import torch.distributed as dist

from ndvq import bitstream, tokens
from ndvq.audio import AUDIO_SUFFIXES, audio_files, check_output, read_bytes, subtype_like
from ndvq.codec import Codec
from ndvq.compress import compress_file, decode_to_file, decompress_file, encode_file
from ndvq.entropy import check_rate_weight
from ndvq.errors import NdvqError
from ndvq.presets import PRESETS
from ndvq.refine import DEFAULT_STEPS as DEFAULT_REFINE_STEPS

log = logging.getLogger("ndvq")
DEFAULT_MODEL = "speech-16k"  # the trained model that ships in the package (ndvq.pretrained)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(BaseException):
    """Raised by SIGTERM and SIGHUP as SIGINT raises KeyboardInterrupt: `finally` blocks (temporary files)
    run, then main returns 128 + the signal's number. A BaseException, so `except Exception` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """While a command runs, STOP_SIGNALS raise Stopped (in the main thread of this process only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked child (a data loader worker) dies as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, signal.SIG_DFL if action is None else action)


def _load_model(source: str) -> Codec:
    codec = Codec.load(source)
    if source in PRESETS and not Path(source).is_dir():
        log.warning(
            "note: model %r is an untrained preset, so the audio will not sound like the input; "
            "pass --model DIR with a trained model, or the shipped %r",
            source,
            DEFAULT_MODEL,
        )
    return codec


def _summary(source: Path, target: Path, data: bytes, seconds: float) -> str:
    header = bitstream.read_header(data, str(target))
    fixed = bitstream.header_size(header.channels, header.entropy_coded)
    return (
        f"{source} -> {target}: {header.duration:.2f} s x {header.channels} ch at {header.bandwidth:g} kbps "
        f"({header.stages} stages x {header.bits} bits x {header.model_sample_rate / header.hop_length:g} Hz = "
        f"{header.nominal_bitrate:g} kbps nominal); {len(data)} bytes = {len(data) - fixed} codes + {fixed} header "
        f"({len(data) * 8 / header.duration / 1000 / header.channels:.3f} kbps per channel in the file); "
        f"{seconds:.2f} s"
    )


def _compress_one(
    codec: Codec, bandwidth: float, progress: bool, entropy: bool | None, rate_weight: float | None, refine: int
) -> Callable[[Path, Path], str]:
    def run(source: Path, target: Path) -> str:
        if target.suffix.lower() in AUDIO_SUFFIXES:
            raise NdvqError(f"{target}: compress writes an .ndvq file, not {target.suffix} audio (roundtrip decodes)")
        start = time.perf_counter()
        data = compress_file(codec, source, target, bandwidth, progress, entropy, rate_weight, refine)
        return _summary(source, target, data, time.perf_counter() - start)

    return run


def _decompress_one(codec: Codec, progress: bool, subtype: str | None) -> Callable[[Path, Path], str]:
    def run(source: Path, target: Path) -> str:
        start = time.perf_counter()
        header = decompress_file(codec, source, target, progress=progress, subtype=subtype)
        seconds = time.perf_counter() - start
        return f"{source} -> {target}: {header.duration:.2f} s at {header.sample_rate} Hz; {seconds:.2f} s"

    return run


def _roundtrip_one(
    codec: Codec,
    bandwidth: float,
    progress: bool,
    subtype: str | None,
    entropy: bool | None,
    rate_weight: float | None,
    refine: int,
) -> Callable[[Path, Path], str]:
    def run(source: Path, target: Path) -> str:
        start = time.perf_counter()
        chosen = subtype or subtype_like(source, target)
        check_output(target, audio=True, subtype=chosen, source=source)
        data = encode_file(codec, source, bandwidth, progress, entropy, rate_weight, refine)
        decode_to_file(codec, data, target, str(source), progress=progress, subtype=chosen)
        return _summary(source, target, data, time.perf_counter() - start)

    return run


def _jobs(source: Path, target: Path, suffixes: tuple[str, ...], new_suffix: str | None) -> Iterator[tuple[Path, Path]]:
    """(input, output) pairs: one file, or every matching file below a directory, mirrored under target."""
    if not source.is_dir():
        yield source, target
        return
    if target.exists() and not target.is_dir():
        raise NdvqError(f"{target}: must be a directory when the input {source} is one")
    files = audio_files(source, suffixes)
    if not files:
        raise NdvqError(f"{source}: no files with suffix {', '.join(suffixes)} below this directory")
    for path in files:
        relative = path.relative_to(source)
        yield path, target / (relative.with_suffix(new_suffix) if new_suffix else relative)


def _run_jobs(jobs: Iterator[tuple[Path, Path]], run: Callable[[Path, Path], str]) -> int:
    failures = 0
    for source, target in jobs:
        try:
            print(run(source, target), flush=True)
        except NdvqError as error:
            log.error("error: %s", error)
            failures += 1
        except OSError as error:
            log.error("error: %s: %s", error.filename or target, error.strerror or error)
            failures += 1
    return 1 if failures else 0


def _info(args: argparse.Namespace) -> int:
    data = read_bytes(args.input)
    header = bitstream.read_header(data, str(args.input))
    fixed = bitstream.header_size(header.channels, header.entropy_coded)
    print(f"file:          {args.input} ({len(data)} bytes: {len(data) - fixed} codes + {fixed} header)")
    kind = "entropy-coded" if header.entropy_coded else "bit-packed"
    print(f"format:        .ndvq version {header.version} ({kind} codes)")
    print(f"model id:      {header.model_id.hex()} ({header.model_sample_rate} Hz, hop {header.hop_length})")
    print(
        f"audio:         {header.channels} ch, {header.sample_rate} Hz, "
        f"{header.length} samples ({header.duration:.3f} s)"
    )
    print(f"bandwidth:     {header.bandwidth:g} kbps requested, {header.nominal_bitrate:g} kbps nominal")
    print(f"codes:         {header.stages} stages x {header.frames} frames x {header.bits} bits per channel")
    print(f"scales:        {', '.join(f'{s:.6g}' for s in header.scales)}")
    codes = (len(data) - fixed) * 8 / header.duration / 1000 / header.channels
    print(f"actual rate:   {codes:.3f} kbps of codes per channel ({header.nominal_bitrate:g} nominal); ", end="")
    print(f"{len(data) * 8 / header.duration / 1000:.3f} kbps with header, all channels")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line (and exit code 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _kbps(text: str) -> str:
    """A bitrate argument, kept as written (it names cache folders) once it is known to be a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a bitrate in kbps, got {text!r}")
    return text


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _steps(text: str) -> int:
    """An argparse type: a whole number, at least 0."""
    return _whole_number(text, 0)


def _count(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    return _whole_number(text, 1)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ndvq", description="NDVQ neural speech codec.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_text: str, bandwidth: bool = True, model: bool = True) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        if name == "info":
            command.add_argument("input", type=Path, help="an .ndvq file")
        else:
            command.add_argument("input", type=Path, help="input file, or a directory processed recursively")
            command.add_argument("output", type=Path, help="output file, or directory mirroring the input tree")
        if bandwidth:
            command.add_argument(
                "-b", "--bandwidth", type=float, default=6.0, help="target bitrate in kbps (default 6)"
            )
        if model:
            command.add_argument(
                "--model",
                default=DEFAULT_MODEL,
                help=f"model directory, shipped model or preset (default {DEFAULT_MODEL})",
            )
        if name in ("compress", "roundtrip"):
            command.add_argument(
                "--entropy",
                action=argparse.BooleanOptionalAction,
                help="entropy-code the codes with the model's tables (format version 2; see ndvq fit-entropy), "
                "or bit-pack them (--no-entropy, format version 1); default: entropy-code when the model has tables "
                "and that takes fewer bytes than bit-packing",
            )
            command.add_argument(
                "--rate-weight",
                type=float,
                metavar="W",
                help="when entropy-coding: rate-aware assignment, log-likelihood + W x log prior "
                "(default: the weight the tables were fitted for, in proportion under 12 stages; 0: the most "
                "likely codes, the audio of --no-entropy, which tables fitted for another weight may code in more "
                "bits than --no-entropy)",
            )
            command.add_argument(
                "--refine",
                type=_steps,
                default=DEFAULT_REFINE_STEPS,
                metavar="STEPS",
                help="refine the encoder's latent by analysis by synthesis, STEPS gradient steps on it against the "
                "input: better audio, the same decoder and format, slower encoding (README, Refinement; default "
                f"{DEFAULT_REFINE_STEPS}, about 4x the encoding time of 0, the one-pass encoder)",
            )
        if name in ("decompress", "roundtrip"):
            default = "the input's where the output format holds it" if name == "roundtrip" else "16-bit PCM"
            command.add_argument(
                "--subtype", help=f"sample format of the output, e.g. PCM_16, PCM_24, FLOAT (default: {default})"
            )
        return command

    add("compress", "Compress audio (wav, flac, ogg, mp3, any rate, any channels) to .ndvq.")
    add("decompress", "Decompress .ndvq to audio at the original sample rate and channels.", bandwidth=False)
    add("roundtrip", "Compress and decompress in one go, to hear the codec.")
    add("info", "Describe a .ndvq file.", bandwidth=False, model=False)

    tokenize = commands.add_parser("tokenize", help="Tokenize a corpus into code shards.", description=_TOKENIZE_HELP)
    tokenize.add_argument("source", type=Path, help="folder of audio files (recursively) or a manifest (.tsv)")
    tokenize.add_argument("out_dir", type=Path, help="output directory of shards (a re-run resumes)")
    tokenize.add_argument("-b", "--bandwidth", type=float, required=True, help="bitrate in kbps, one of the model's")
    tokenize.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model directory, shipped model or preset (default {DEFAULT_MODEL})"
    )
    tokenize.add_argument(
        "--batch-seconds",
        type=float,
        default=tokens.DEFAULT_BATCH_SECONDS,
        help=f"seconds of audio per shard: a shard is written once its files reach this many "
        f"(default {tokens.DEFAULT_BATCH_SECONDS:g}); "
        "files are still encoded one at a time, so codes do not depend on it",
    )
    tokenize.add_argument("--workers", type=_count, default=1, help="worker processes, sharing the threads (default 1)")
    tokenize.add_argument(
        "--refine",
        type=_steps,
        default=0,
        metavar="STEPS",
        help="encode as compress --refine STEPS: codes that decode closer to the input, slower (README, "
        "Refinement; default 0: the one-pass encoder, where compress takes "
        f"{DEFAULT_REFINE_STEPS}); refined codes depend on the threads per worker",
    )
    fit = commands.add_parser("fit-entropy", help="Fit a model's entropy tables.", description=_FIT_ENTROPY_HELP)
    fit.add_argument("model", help="model directory (or preset, with --out)")
    fit.add_argument("source", type=Path, help="training audio: a folder (recursively) or a manifest (.tsv)")
    fit.add_argument("--out", type=Path, help="model directory to write (default: MODEL itself)")
    fit.add_argument("--limit", type=_count, help="only N files, taken at equal steps through the list")
    fit.add_argument(
        "--rate-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="fit for rate-aware assignment at weight W, which compress --entropy then uses (fewer bits, "
        "slightly different audio; default 0: the most likely codes)",
    )
    train = commands.add_parser("train", help="Train a codec.", description="Train a codec (under torchrun: DDP).")
    train.add_argument("--config", type=Path, help="YAML training config, e.g. configs/speech-16k-small.yaml")
    train.add_argument("--run-dir", type=Path, required=True, help="where checkpoints and logs go")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly where it stopped")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. data.train=DIR steps=100")
    evaluate = commands.add_parser("eval", help="Compare codecs on reference speech.", description=_EVAL_HELP)
    evaluate.add_argument("references", type=Path, help="folder of audio files or a manifest (.tsv)")
    evaluate.add_argument("--out", type=Path, required=True, help="results directory (also the cache)")
    evaluate.add_argument("--model", action="append", default=[], metavar="[LABEL=]DIR", help="an NDVQ/RVQ model")
    evaluate.add_argument(
        "--entropy-model",
        action="append",
        default=[],
        metavar="[LABEL=]DIR",
        help="a model with entropy tables, its files entropy-coded (as compress --entropy, one pass unless --refine)",
    )
    evaluate.add_argument(
        "--refine",
        action="append",
        default=[],
        metavar="LABEL=STEPS",
        help="encode the model labelled LABEL with STEPS steps of refinement, as compress --refine (default 0 for "
        f"every model: the one-pass encoder; compress takes {DEFAULT_REFINE_STEPS} unless told)",
    )
    evaluate.add_argument(
        "-b", "--bandwidth", nargs="+", type=_kbps, default=["1.5", "3", "6"], help="model bitrates, kbps"
    )
    evaluate.add_argument(
        "--opus", nargs="*", type=_kbps, default=[], metavar="KBPS", help="Opus bitrates (opus-tools)"
    )
    evaluate.add_argument("--codec2", nargs="*", default=[], metavar="MODE", help="Codec2 modes, e.g. 3200 700C")
    evaluate.add_argument("--metrics", nargs="+", default=None, help="subset of metrics (default: all)")
    evaluate.add_argument("--limit", type=_count, help="only the first N reference files")
    evaluate.add_argument("--workers", type=_count, default=1, help="worker processes")
    evaluate.add_argument("--usage", action="store_true", help="codebook usage per stage instead")
    evaluate.add_argument("--robustness", action="store_true", help="code robustness to noise instead")
    report = commands.add_parser(
        "report", help="One self-contained HTML page from eval results.", description=_REPORT_HELP
    )
    report.add_argument("results", type=Path, help="results directory written by ndvq eval")
    report.add_argument("--out", type=Path, help="HTML file to write (default RESULTS/report.html)")
    from ndvq.train.corpus import add_data_parser

    add_data_parser(commands)
    onnx = commands.add_parser("export-onnx", help="Export a model as ONNX graphs.", description=_EXPORT_ONNX_HELP)
    onnx.add_argument("model", help="model directory or preset")
    onnx.add_argument("out_dir", type=Path, help="directory for the graphs and onnx.json")
    onnx.add_argument(
        "-b", "--bandwidth", type=float, nargs="+", metavar="KBPS", help="bitrates (default: all the model's)"
    )
    export = commands.add_parser("export", help="Export a training run as a model directory.")
    export.add_argument("run_dir", type=Path)
    export.add_argument("output", type=Path)
    export.add_argument("--step", type=int, help="a kept checkpoint's step (default: the latest)")
    return parser


_TOKENIZE_HELP = (
    "Code every audio file of a folder or manifest at one bitrate into numpy shards (shard-NNNNN.npy and .json, "
    "then index.json); the codes are those `ndvq compress --refine STEPS` stores, STEPS being --refine (default 0: "
    "one pass). Read them with ndvq.tokens.load(OUT_DIR). Files that cannot be coded are listed as failures; a "
    "re-run skips finished shards. Under torchrun, the shards are split between the ranks."
)
_FIT_ENTROPY_HELP = (
    "Code the training audio at the model's highest bitrate and fit integer probability tables per stage, "
    "each chosen by a context (the group of the previous stage's code, or of the previous frame's for stage 1; "
    "see ndvq/entropy.py). The tables are saved with the model (entropy.safetensors, checksummed in "
    "config.json); `ndvq compress` then entropy-codes by default, and files bit-packed before stay valid."
)
_REPORT_HELP = (
    "Write one self-contained HTML page (report.html) from an `ndvq eval` results directory: the summary, "
    "usage and robustness tables and plots, and per bitrate a few examples to listen to, with spectrograms."
)
_EXPORT_ONNX_HELP = (
    "Write ONNX graphs of a model (needs the 'onnx' extra): encoder-<kbps>kbps.onnx per bitrate, audio [B, 1, T] "
    "divided by its RMS scale and zero-padded to a multiple of the hop -> codes [B, n_q, T / hop] int64; "
    "decoder.onnx, codes [B, n_q, F] (any n_q) -> audio [B, 1, F * hop] to multiply by the scale; and onnx.json "
    "describing them."
)
_EVAL_HELP = (
    "Code reference audio with NDVQ/RVQ models and classical codecs at several bitrates and score it with "
    "PESQ, STOI, ViSQOL, mel and STFT distance and SI-SDR; or, with --usage / --robustness, measure codebook "
    "usage or the robustness of the codes to noise. Results are cached: rerun to resume."
)


def _model_specs(items: list[str]) -> list[tuple[str, str]]:
    """(label, model) pairs from --model [LABEL=]DIR arguments."""
    specs = []
    for item in items:
        label, sep, model = item.partition("=")
        if sep and not (label and model):
            raise NdvqError(f"--model {item}: expected LABEL=MODEL or MODEL (a directory, shipped model or preset)")
        specs.append((label, model) if sep else (Path(item).name or item, item))
    return specs


def _refine_specs(items: list[str], labels: list[str]) -> dict[str, int]:
    """label -> refinement steps from --refine LABEL=STEPS arguments, each naming a model of the run."""
    steps = {}
    for item in items:
        label, _, count = item.partition("=")
        if label not in labels:
            known = ", ".join(labels) or "none"
            raise NdvqError(f"--refine {item}: no model labelled {label!r} (models: {known})")
        if label in steps:
            raise NdvqError(f"--refine {item}: {label!r} is given steps twice")
        try:
            steps[label] = _steps(count)
        except argparse.ArgumentTypeError as error:
            raise NdvqError(f"--refine {item}: STEPS {error}") from None
    return steps


def _evaluate(args: argparse.Namespace, progress: bool) -> int:
    from ndvq.eval import compare

    files = compare.reference_files(args.references, args.limit)
    models = _model_specs(args.model)
    if args.usage or args.robustness:
        from ndvq.eval import experiments

        if args.refine:
            raise NdvqError("--refine: not with --usage or --robustness, which measure the one-pass encoder")
        if not models:
            raise NdvqError("--usage and --robustness need at least one --model")
        run = experiments.usage if args.usage else experiments.robustness
        print(run(models, files, args.out, float(args.bandwidth[0])))
        return 0
    specs = [compare.SystemSpec("ndvq", label, tuple(args.bandwidth), model) for label, model in models]
    for label, model in _model_specs(args.entropy_model):
        specs.append(compare.SystemSpec("ndvq", label, tuple(args.bandwidth), model, entropy=True))
    labels = [spec.label for spec in specs]
    if len(set(labels)) < len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise NdvqError(
            f"two systems are labelled {duplicate!r}: name them, e.g. --entropy-model {duplicate}-entropy=DIR"
        )
    refine = _refine_specs(args.refine, labels)
    specs = [replace(spec, refine=refine.get(spec.label, 0)) for spec in specs]
    if args.opus:
        specs.append(compare.SystemSpec("opus", "opus", tuple(args.opus)))
    if args.codec2:
        specs.append(compare.SystemSpec("codec2", "codec2", tuple(args.codec2)))
    if not specs:
        raise NdvqError("nothing to evaluate: give --model, --opus or --codec2")
    metrics = tuple(args.metrics) if args.metrics else tuple(compare.METRICS)
    rows = compare.evaluate(specs, files, args.out, metrics, args.workers, progress=progress)
    print(compare.write_results(args.out, rows, metrics))
    print(f"results: {args.out}/summary.md, summary.csv, summary.json, per_utterance.csv")
    return 0


def _tokenize(args: argparse.Namespace, progress: bool) -> int:
    """ndvq tokenize; under torchrun (WORLD_SIZE > 1) one rank of a gloo group, the codec on the CPU."""
    if not args.source.exists():
        raise NdvqError(f"{args.source}: no such file or directory")
    codec = _load_model(args.model)
    codec.stages(args.bandwidth)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        summary = tokens.tokenize(
            args.model if args.workers > 1 else codec,
            args.source,
            args.out_dir,
            args.bandwidth,
            refine_steps=args.refine,
            batch_seconds=args.batch_seconds,
            workers=args.workers,
            rank=rank,
            world=world,
            progress=progress and rank == 0,
        )
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank == 0:
        for path, reason in summary.failures:
            log.warning("failed %s: %s", path, reason)
        print(summary, flush=True)
    return 0


def _fit_entropy(args: argparse.Namespace, progress: bool) -> int:
    from ndvq.entropy_fit import fit_entropy

    if not Path(args.model).is_dir() and args.out is None:
        raise NdvqError(f"{args.model}: not a model directory; give --out to write the model with its tables")
    out = args.out or Path(args.model)
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not existing.is_dir():  # refused before the fitting, not after
        raise NdvqError(f"{out}: cannot write a model there ({existing} is not a directory)")
    if not os.access(existing, os.W_OK):
        raise NdvqError(f"{out}: cannot write a model there ({existing} is not writable)")
    codec = Codec.load(args.model)
    tables, files, failures = fit_entropy(codec, args.source, args.limit, progress, rate_weight=args.rate_weight)
    for path, reason in failures:
        log.warning("skipped %s: %s", path, reason)
    codec.set_entropy(tables)
    codec.save(out)
    print(f"{out}: entropy tables for {codec.num_codebooks} stages fitted on {files} files; compress entropy-codes")
    return 0


def _train(args: argparse.Namespace) -> int:
    try:
        from ndvq.train import trainer
        from ndvq.train.config import load_config
    except ImportError as error:
        missing = f"training needs the 'train' extra ({error.name} is missing): pip install 'ndvq[train]'"
        raise NdvqError(missing) from None
    if args.command == "export":
        trainer.export(args.run_dir, args.output, args.step)
        print(f"{args.run_dir} -> {args.output}: load it with --model {args.output}")
        return 0
    trainer.run(load_config(args.config, args.overrides), args.run_dir, args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Our messages from INFO up; other libraries' (matplotlib, ...) only from WARNING.
    logging.basicConfig(format="ndvq: %(message)s", level=logging.WARNING, stream=sys.stderr, force=True)
    logging.getLogger("ndvq").setLevel(logging.INFO)
    args = _parser().parse_args(argv)
    torch.set_num_threads(int(os.environ.get("NDVQ_THREADS", torch.get_num_threads())))
    progress = sys.stderr.isatty()
    try:
        with _stop_signals_raise():
            return _command(args, progress)
    except NdvqError as error:
        log.error("error: %s", error)
        return 1
    except BrokenPipeError:  # output piped to a reader that closed it (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:  # a file system refusal that no command turned into an NdvqError: still one line
        log.error("error: %s", error)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Stopped as stop:
        log.error("stopped by %s", signal.Signals(stop.signum).name)
        return 128 + stop.signum


def _command(args: argparse.Namespace, progress: bool) -> int:
    """Run the parsed command; NdvqError, OSError, KeyboardInterrupt and Stopped are main's to report."""
    if args.command == "info":
        return _info(args)
    if args.command in ("train", "export"):
        return _train(args)
    if args.command == "eval":
        return _evaluate(args, progress)
    if args.command == "report":
        from ndvq.eval.report import write_report

        print(write_report(args.results, args.out))
        return 0
    if args.command == "tokenize":
        return _tokenize(args, progress)
    if args.command == "fit-entropy":
        return _fit_entropy(args, progress)
    if args.command == "export-onnx":
        from ndvq.onnx_export import export_onnx

        for path in export_onnx(_load_model(args.model), args.out_dir, args.bandwidth):
            print(path, flush=True)
        return 0
    if args.command == "data":
        from ndvq.train.corpus import run_data_command

        return run_data_command(args)
    if not args.input.exists():
        raise NdvqError(f"{args.input}: no such file or directory")
    codec = _load_model(args.model)
    if getattr(args, "entropy", None) and codec.entropy is None:  # once, before a directory's first file
        raise NdvqError(f"--entropy: model {args.model} has no entropy tables (make them with ndvq fit-entropy)")
    rate_weight = getattr(args, "rate_weight", None)
    if rate_weight is not None and (args.entropy is False or codec.entropy is None):
        raise NdvqError(
            "--rate-weight: only when entropy-coding, with a model that has entropy tables "
            "(bit-packed codes cost the same whichever is chosen)"
        )
    if rate_weight is not None:
        check_rate_weight(rate_weight)  # once, before a directory's first file
    if args.command == "compress":
        codec.stages(args.bandwidth)
        jobs = _jobs(args.input, args.output, AUDIO_SUFFIXES, ".ndvq")
        compress_one = _compress_one(codec, args.bandwidth, progress, args.entropy, rate_weight, args.refine)
        return _run_jobs(jobs, compress_one)
    if args.command == "decompress":
        jobs = _jobs(args.input, args.output, (".ndvq",), ".wav")
        return _run_jobs(jobs, _decompress_one(codec, progress, args.subtype))
    codec.stages(args.bandwidth)
    jobs = _jobs(args.input, args.output, AUDIO_SUFFIXES, ".wav")
    options = (args.subtype, args.entropy, rate_weight, args.refine)
    return _run_jobs(jobs, _roundtrip_one(codec, args.bandwidth, progress, *options))


def entry_point() -> None:
    sys.exit(main())
