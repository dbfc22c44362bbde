"""`edgehub publish`: build, measure, sign and register variants of a model."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgehub.hub.cli.common import console, err_console, hub_options, json_option, one_line_errors, open_hub, print_json
from edgehub.hub.cli.variant_views import sensitivity_tables, variants_table


class RichSink:
    """Shows one progress bar per variant, advancing per pass, and one per training run
    (steps, running loss, validation accuracy)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}
        self.training: dict[tuple[str, str, int], int] = {}

    def start(self, label: str, steps: int) -> None:
        self.tasks[label] = self.progress.add_task(label, total=steps, status="")

    def update(self, label: str, message: str) -> None:
        self.progress.update(self.tasks[label], status=message)

    def train(self, label: str, p) -> None:
        key = (label, p.task, p.epoch)
        if key not in self.training:
            self.training[key] = self.progress.add_task(f"  {p.task} {p.epoch}/{p.epochs}", total=p.steps, status="")
        val = "" if p.val_accuracy is None else f"  val acc {p.val_accuracy:.4f}"
        self.progress.update(self.training[key], completed=p.step, status=f"loss {p.loss:.4f}{val}")

    def advance(self, label: str) -> None:
        self.progress.advance(self.tasks[label])
        task = self.progress.tasks[self.tasks[label]]
        if task.finished:
            self.progress.update(self.tasks[label], status="done")


@click.command()
@click.argument("source")
@click.option("--name", required=True, help="Model name in the zoo (lower-case, digits, . _ -).")
@click.option("--eval", "eval_path", required=True, type=click.Path(path_type=Path),
              help=".npz with one array per model input (or 'x'), optional integer labels 'y'.")
@click.option("--profile", "profiles", multiple=True, default=("x86-cpu",), show_default=True,
              help="Device profile to build for; repeat for several (see `edgehub profiles list`).")
@click.option("--calib", "calib_path", type=click.Path(path_type=Path),
              help="Calibration .npz for static quantization (default: the eval set).")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict for a PyTorch factory source.")
@click.option("--profiles-file", type=click.Path(path_type=Path), help="TOML/YAML file with extra profiles.")
@click.option("--train", "train_path", type=click.Path(path_type=Path),
              help="Labelled .npz (same format as --eval) for the passes that train: structured pruning with "
                   "fine-tuning, distillation (PyTorch sources only).")
@click.option("--unlabeled", "unlabeled_path", type=click.Path(path_type=Path),
              help="Inputs without labels (same keys as --train; any 'y' is ignored): passes that train with "
                   "a teacher (distillation, depthwise-separable recovery, fine-tuning with a teacher) also learn "
                   "its outputs on them.")
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path),
              help="TOML/YAML file of pass chains that extend or narrow the profiles' recipes.")
@click.option("--metric", help="Task metric 'package.module:function(outputs, data) -> float' (higher is better) that "
              "scores variants on the eval set instead of accuracy/agreement; 'data' holds the eval file's "
              "arrays that are not inputs (e.g. y, boxes). Runs in the evaluation child.")
@click.option("--new-version", is_flag=True, help="Publish as the next version if the name exists with other content.")
@click.option("--deploy", is_flag=True,
              help="Also make it the profiles' production at once (every enrolled device of the profiles gets "
                   "it). Default: register only; devices get a version through a rollout or an alias.")
@click.option("--rollout", "rollout_spec", metavar="SPEC",
              help="Start a rollout of the new version on each profile (or group=TAG), e.g. "
                   "'canary=5%,stages=25%,50%' (keys: group, canary, stages, success, error, soak, on_success "
                   "[continue|approve], on_error [rollback|pause]).")
@click.option("--no-deploy", is_flag=True, hidden=True, help="Kept for old scripts: registering only is the default.")
@click.option("--eval-timeout", "eval_timeout_s", type=click.FloatRange(min=1),
              help="Seconds one evaluation of a model may take in its child process (default "
                   "$EDGEHUB_EVAL_TIMEOUT_S or 600).")
@click.option("--eval-memory", "eval_memory_mb", type=click.IntRange(min=64),
              help="Address-space limit in MB of the evaluation child (default $EDGEHUB_EVAL_MEMORY_MB or 8192).")
@hub_options
@json_option
@one_line_errors
def publish(source, name, eval_path, profiles, calib_path, weights, profiles_file, train_path, unlabeled_path,
            recipe_path, metric, new_version, deploy, rollout_spec, no_deploy, eval_timeout_s, eval_memory_mb, home,
            hub_url, hub_token, hub_ca, as_json):
    """Build variants of SOURCE (an .onnx file or 'package.module:factory') for device profiles.

    \b
    Examples:
      edgehub publish model.onnx --name fmnist-cnn --eval eval.npz --profile x86-cpu
      edgehub publish mypkg.nets:resnet --weights w.pt --name resnet --eval eval.npz --json
      edgehub publish mypkg.nets:resnet --weights w.pt --name resnet --eval eval.npz --train train.npz
      edgehub publish mypkg.nets:resnet --weights w.pt --name resnet --eval eval.npz --train train.npz \\
          --recipe chains.toml
      edgehub publish model.onnx --name m --eval eval.npz --profile rpi5 --rollout canary=5%,stages=25%,50%
      EDGEHUB_HUB=https://hub:8443 EDGEHUB_TOKEN=... edgehub publish model.onnx --name m --eval eval.npz
    """
    from edgehub.hub.client.models import parse_publish_rollout
    from edgehub.hub.publish.pipeline import PublishOptions

    rollout = parse_publish_rollout(rollout_spec) if rollout_spec else None
    options = PublishOptions(source=source, name=name, eval_path=eval_path, profiles=list(profiles),
                             calib_path=calib_path, weights=weights, new_version=new_version,
                             profiles_file=profiles_file, train_path=train_path, unlabeled_path=unlabeled_path,
                             recipe_path=recipe_path, metric=metric,
                             eval_timeout_s=eval_timeout_s, eval_memory_mb=eval_memory_mb)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<16}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=err_console, transient=as_json)
    with open_hub(home, hub_url, hub_token, hub_ca) as hub, progress:
        data = hub.publish(options, RichSink(progress), deploy=deploy, rollout=rollout, on_upload=UploadBars(progress))
    if as_json:
        print_json(data)
        return
    _print_result(name, data)


class UploadBars:
    """One progress bar per file sent to a remote hub."""

    def __init__(self, progress: Progress):
        self.progress, self.tasks = progress, {}

    def __call__(self, filename: str, done: int, total: int) -> None:
        if filename not in self.tasks:
            self.tasks[filename] = self.progress.add_task(f"upload {filename}"[:16], total=max(total, 1), status="")
        self.progress.update(self.tasks[filename], completed=done if total else 1,
                             status=f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")


def _print_result(name: str, data: dict) -> None:
    from edgehub.hub.cli.zoo_cmd import variant_records

    variants = variant_records(data["variants"])
    if data["already_published"]:
        console.print(f"{escape(name)} v{data['version']} is already published with this content; nothing to do.")
    console.print(variants_table(variants, title=f"{name} v{data['version']}"))
    for table in sensitivity_tables(variants):
        console.print(table)
    for s in data["skipped"]:
        what = f"variant {s['variant']}" if s.get("variant") else f"{s['format']} for {s['profile']}"
        console.print(f"[yellow]skipped[/] {escape(what)}: {escape(s['reason'])}", highlight=False)
    deployed = data["deployed_profiles"]
    if deployed:
        console.print(f"deployed to profiles {', '.join(deployed)}: {data['enrolled_devices']} enrolled device(s) will "
                      "benchmark the candidates (`edgehub fleet status`)")
    for r in data.get("rollouts", []):
        console.print(f"rollout [bold]#{r['id']}[/] on {escape(r['group'])}: {r['members']} devices; watch it: "
                      f"edgehub rollout status {r['id']}")
    if not deployed and not data.get("rollouts"):
        console.print(f"registered {escape(name)} v{data['version']}; devices get it through a rollout: "
                      f"edgehub rollout start {escape(name)}:{data['version']} --group profile:PROFILE")
