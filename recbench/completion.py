"""Tab completion for bash and zsh: ``eval "$(recbench completion bash)"``.

The first word completes to a command; ``data`` and ``results`` complete their verbs, ``models``
its arguments. The overrides of ``train``, ``compare``, ``bench`` and ``data`` come from Hydra's
own completion of that command's config (the config groups it composes, their options, the keys
of the composed config, each after the overrides already typed): the script asks ``recbench
completion query <config>`` with the line after the command word, which is the line Hydra's
completion expects from an application of its own. Hydra's generated script
(``--shell-completion install=bash``) assumes the application is one word, so it cannot complete
``recbench <command> ...``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

# the commands whose overrides Hydra completes, and the config each composes
HYDRA_CONFIGS = {"train": "train", "compare": "compare", "bench": "bench", "data": "data"}
SHELLS = ("bash", "zsh")

_SCRIPT = r"""# recbench tab completion for bash (zsh: through bashcompinit)
_recbench_complete()
{
    local line=${COMP_LINE:0:$COMP_POINT}
    local -a words
    # zsh (through bashcompinit, in sh emulation: arrays from 0) reads an array with -A, and
    # would read a line's trailing blanks as one more, empty word
    local typed=${line%"${line##*[![:space:]]}"}
    if [[ -n ${ZSH_VERSION-} ]]; then
        read -r -A words <<< "$typed"
    else
        read -r -a words <<< "$typed"
    fi
    [[ $line == *[[:space:]] ]] && words+=("")
    local n=${#words[@]}
    local cur=${words[n-1]} choices=""
    if (( n <= 2 )); then
        choices="__COMMANDS__ --help --version"
    else
        case ${words[1]} in
            train|compare|bench)
                choices=$(COMP_LINE="recbench ${words[*]:2}" "${words[0]}" completion query \
                    "${words[1]}" 2>/dev/null) ;;
            data)
                if (( n == 3 )); then
                    choices="prepare info"
                else
                    choices=$(COMP_LINE="recbench ${words[*]:3}" "${words[0]}" completion \
                        query data 2>/dev/null)
                fi ;;
            models) choices="__TASKS__ --verbose" ;;
            results)
                if (( n == 3 )); then
                    choices="check add"
                elif [[ ${words[2]} == check ]]; then
                    choices="--repair"
                else
                    COMPREPLY=($(compgen -f -- "$cur"))
                    return
                fi ;;
            completion) (( n == 3 )) && choices="__SHELLS__" ;;
        esac
    fi
    # bash splits a word at '=' and ':' (COMP_WORDBREAKS) and replaces only its last part:
    # offer each choice without what precedes that part
    local part=${COMP_WORDS[COMP_CWORD]}
    local head=${cur%"$part"}
    local -a found
    found=($(compgen -W "$choices" -- "$cur"))
    COMPREPLY=("${found[@]#"$head"}")
}
complete -o nospace -F _recbench_complete recbench
"""


def hydra_query(config_name: str, run: Callable[[], None]) -> None:
    """Print what ``run`` (Hydra's completion of ``config_name`` for ``$COMP_LINE``) offers, less
    the config groups that config does not compose: Hydra offers every folder of the configs
    (``recbench data`` is offered ``task=`` and ``logger=``, ``train`` ``lineage=``), which
    the command then refuses ("No match in the defaults list")."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run()
    choices = out.getvalue().split()
    absent = _groups_not_composed(config_name, os.environ.get("COMP_LINE", ""))

    def composed(choice: str) -> bool:
        group = re.match(r"([\w-]+)[=/]", choice)  # `logger=`, `logger=none`, `tuned/`
        return group is None or group[1] not in absent

    print(" ".join(c for c in choices if composed(c)))


def _groups_not_composed(config_name: str, line: str) -> set[str]:
    """The config groups of the config folders that ``config_name``, composed with the
    overrides typed on ``line`` before the word being completed, does not use (none: the line
    does not compose)."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir, user_config_dirs, user_search_path

    words = line.split()[1:]  # after the program's name
    if words and not line[-1:].isspace():
        words = words[:-1]  # the word being completed
    # a swept value (-m model=lr,fm) composes as its first option
    typed = [re.sub(r"=([^,]*),.*", r"=\1", w) for w in words if not w.startswith("-")]
    folders = [Path(config_dir()), *user_config_dirs()]
    groups = {p.name for f in folders if f.is_dir() for p in f.iterdir() if p.is_dir()}
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name, user_search_path(typed), return_hydra_config=True)
    except Exception:  # noqa: BLE001 - a line Hydra cannot compose: its completion decides
        return set()
    used = {str(k).split("/")[0] for k in cfg.hydra.runtime.choices}
    return groups - used - {"hydra"}


_ZSH_HEAD = "autoload -U +X bashcompinit && bashcompinit\n"


def script(shell: str, commands: list[str], tasks: list[str]) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    if shell not in SHELLS:
        raise ValueError(f"recbench completion {shell}: choose one of {', '.join(SHELLS)}")
    body = (
        _SCRIPT.replace("__COMMANDS__", " ".join(commands))
        .replace("__TASKS__", " ".join(f"task={t}" for t in tasks))
        .replace("__SHELLS__", " ".join(SHELLS))
    )
    return (_ZSH_HEAD if shell == "zsh" else "") + body
