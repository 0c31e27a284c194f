"""Tab completion: the script ``recbench completion bash`` prints, run by bash on lines a user
types, completes commands, verbs and Hydra's overrides as bash then shows them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recbench.completion import script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

COMMANDS = ["train", "compare", "bench", "data", "models", "results", "completion"]


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), with ``recbench`` on the PATH."""
    shim = tmp_path / "bin" / "recbench"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m recbench.cli "$@"\n')
    shim.chmod(0o755)
    words = re.findall(r"[=:]|[^\s=:]+", line)
    if line.endswith(" "):
        words.append("")
    (tmp_path / "complete.sh").write_text(script("bash", COMMANDS, ["ctr", "topk"]))
    quoted = " ".join("'" + w + "'" for w in words)
    probe = (
        f"source {tmp_path / 'complete.sh'}\n"
        f"COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        "_recbench_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_commands_and_verbs_complete_without_running_recbench(tmp_path: Path) -> None:
    assert complete("recbench c", tmp_path) == ["compare", "completion"]
    assert complete("recbench data ", tmp_path) == ["prepare", "info"]
    assert complete("recbench models t", tmp_path) == ["task=ctr", "task=topk"]
    assert complete("recbench results check -", tmp_path) == ["--repair"]


def test_overrides_complete_from_the_commands_hydra_config(tmp_path: Path) -> None:
    # a config group's options: bash replaces the part after '=', so that part is offered
    assert complete("recbench train model=deep", tmp_path) == ["deep_crossing", "deepfm"]
    # the cursor right after '=': bash's word is '=' itself, so the choices keep it
    assert "=deepfm" in complete("recbench train model=", tmp_path)
    # the keys of the config composed with the overrides already typed
    keys = complete("recbench train model=din model.", tmp_path)
    assert "model.embed_dim=" in keys and all(k.startswith("model.") for k in keys)
    # another command's config: compare's own keys
    assert "lineage=" in complete("recbench compare lin", tmp_path)


def test_only_the_groups_the_commands_config_composes_are_offered(tmp_path: Path) -> None:
    """Hydra offers every folder of the configs; the command would refuse a group its config
    does not compose ("Could not override 'logger'. No match in the defaults list")."""
    data = complete("recbench data info ", tmp_path)
    assert "dataset=" in data and "force=" in data
    assert not {"task=", "logger=", "model=", "trainer=", "lineage="} & set(data)
    assert complete("recbench data info log", tmp_path) == []
    assert complete("recbench train lin", tmp_path) == []  # compare's group
    # a group a typed override brings in: model=drn composes task=rl and its env
    assert "env=" in complete("recbench train model=drn en", tmp_path)


def test_zsh_gets_the_same_function_through_bashcompinit() -> None:
    z = script("zsh", COMMANDS, ["ctr"])
    assert z.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert z.endswith(script("bash", COMMANDS, ["ctr"]))
    with pytest.raises(ValueError, match="choose one of bash, zsh"):
        script("fish", COMMANDS, ["ctr"])


def test_the_command_prints_the_script_and_refuses_other_shells(capsys) -> None:
    from recbench.cli import main

    main(["completion", "bash"])
    out = capsys.readouterr().out
    assert "complete -o nospace -F _recbench_complete recbench" in out
    assert "task=rl" in out and 'choices="train compare bench data models results completion' in out
    with pytest.raises(SystemExit) as stop:
        main(["completion", "fish"])
    assert stop.value.code == 2
    assert 'eval "$(recbench completion bash)"' in " ".join(capsys.readouterr().err.split())


# what zsh's bashcompinit does on <TAB> (its _bash_complete, less compadd, which only a
# completion widget may call): the COMP_* variables from zsh's words, then its compgen -F
_ZSH_PROBE = r"""
autoload -U compinit && compinit -u -D
source "$1"
line="$2"
words=( ${=line} ); [[ $line == *" " ]] && words+=("")
CURRENT=${#words}
PREFIX=${words[CURRENT]}
local -x COMP_POINT COMP_CWORD
local -a COMP_WORDS COMPREPLY
local -x COMP_LINE="$words"
(( COMP_POINT = 1 + ${#${(j. .)words[1,CURRENT-1]}} + $#PREFIX ))
(( COMP_CWORD = CURRENT - 1 ))
COMP_WORDS=( "${words[@]}" )
print -l -r -- ${(f)"$(compgen -F _recbench_complete -- ${words[CURRENT]})"}
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_completes_past_the_command_word(tmp_path: Path) -> None:
    """zsh runs the bash function in sh emulation, where ``read -a`` is no option and a line's
    trailing blank reads as one more word: every line used to complete to the command list."""
    shim = tmp_path / "bin" / "recbench"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m recbench.cli "$@"\n')
    shim.chmod(0o755)
    (tmp_path / "complete.zsh").write_text(script("zsh", COMMANDS, ["ctr", "topk"]))
    (tmp_path / "probe.zsh").write_text(_ZSH_PROBE)

    def offered(line: str) -> list[str]:
        proc = subprocess.run(
            ["zsh", "-f", str(tmp_path / "probe.zsh"), str(tmp_path / "complete.zsh"), line],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONWARNINGS": "ignore"},
            cwd=tmp_path,
        )
        assert proc.returncode == 0 and "bad option" not in proc.stderr, proc.stderr
        return [w for w in proc.stdout.splitlines() if w]

    assert offered("recbench data ") == ["prepare", "info"]
    assert offered("recbench completion ") == ["bash", "zsh"]
    assert offered("recbench results check -") == ["--repair"]
    # zsh keeps 'model=' in the word, and matches the whole choice against it
    assert offered("recbench train model=deep") == ["model=deep_crossing", "model=deepfm"]
