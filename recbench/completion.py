"""Tab completion for bash and zsh: ``eval "$(recbench completion bash)"``.

The first word completes to a command; ``data`` and ``results`` complete their verbs, ``models``
its arguments. The overrides of ``train``, ``compare``, ``bench`` and ``data`` come from Hydra's
own completion of that command's config (config groups, their options, the keys of the composed
config, each after the overrides already typed): the script asks ``recbench completion query
<config>`` with the line after the command word, which is the line Hydra's completion expects
from an application of its own. Hydra's generated script (``--shell-completion install=bash``)
assumes the application is one word, so it cannot complete ``recbench <command> ...``.
"""

from __future__ import annotations

# the commands whose overrides Hydra completes, and the config each composes
HYDRA_CONFIGS = {"train": "train", "compare": "compare", "bench": "bench", "data": "data"}
SHELLS = ("bash", "zsh")

_SCRIPT = r"""# recbench tab completion for bash (zsh: through bashcompinit)
_recbench_complete()
{
    local line=${COMP_LINE:0:$COMP_POINT}
    local -a words
    read -r -a words <<< "$line"
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
