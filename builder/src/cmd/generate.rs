//! `hermit completions SHELL` and `hermit manpages DIR`: shell completions
//! and man pages, generated from the clap definitions, so they never drift
//! from the commands. Packagers run both on the built binary (`make deb`);
//! users who install by hand run them once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
pub struct ManpagesArgs {
    /// The directory to write hermit.1, hermit-build.1, … into (created if missing)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs, cli: Command) -> anyhow::Result<ExitCode> {
    let text = completion_script(args.shell, cli)?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes one man page per visible command into `args.dir`.
pub fn manpages(args: ManpagesArgs, cli: Command) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cli, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// The completion script of `cli` for `shell`. For bash, the arguments that
/// name spec files (`SPEC`) complete `*.toml` names and those that name
/// records complete `*.json` names (plus directories to walk into): clap's
/// bash script offers the option list there instead.
pub fn completion_script(shell: Shell, mut cli: Command) -> anyhow::Result<String> {
    let name = cli.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli, &name, &mut out);
    let mut text = String::from_utf8(out).context("clap_complete wrote a non-UTF-8 script")?;
    if shell == Shell::Bash {
        text.push_str(&bash_file_arguments(&cli, &name));
    }
    Ok(text)
}

/// The file name patterns a subcommand's positional arguments take: `*.toml`
/// for a spec, `*.json` for a record (by the argument's value name).
fn file_patterns(sub: &Command) -> Vec<&'static str> {
    let mut globs = Vec::new();
    for arg in sub.get_positionals() {
        let names: Vec<String> = match arg.get_value_names() {
            Some(v) => v.iter().map(|n| n.to_string()).collect(),
            None => vec![arg.get_id().to_string()],
        };
        let names = names.join("|").to_ascii_uppercase();
        if names.contains("SPEC") && !globs.contains(&"*.toml") {
            globs.push("*.toml");
        }
        if names.contains("RECORD") && !globs.contains(&"*.json") {
            globs.push("*.json");
        }
    }
    globs
}

/// A bash function run after clap's: where a subcommand's positional
/// argument names a spec or a record and clap offered only options, it
/// offers those files instead.
fn bash_file_arguments(cli: &Command, name: &str) -> String {
    let mut cases = String::new();
    for sub in cli.get_subcommands() {
        let globs = file_patterns(sub);
        if globs.is_empty() {
            continue;
        }
        let gens: Vec<String> = globs
            .iter()
            .map(|g| format!("$(compgen -f -X '!{g}' -- \"$cur\")"))
            .collect();
        cases.push_str(&format!(
            "        {}) files=( {} ) ;;\n",
            sub.get_name(),
            gens.join(" ")
        ));
    }
    let f = format!("_{}", name.replace('-', "__"));
    format!(
        r#"
# Spec (*.toml) and record (*.json) file names, and directories, where a
# subcommand's argument names them and clap offered only its options.
{f}_files() {{
    {f} "$@"
    local cur="${{COMP_WORDS[COMP_CWORD]}}" w files IFS=$'\n'
    [[ $COMP_CWORD -ge 2 && $cur != -* ]] || return 0
    for w in "${{COMPREPLY[@]}}"; do
        [[ $w == -* || $w == \<* || $w == \[* ]] || return 0
    done
    case "${{COMP_WORDS[1]}}" in
{cases}        *) return 0 ;;
    esac
    compopt -o filenames 2>/dev/null
    COMPREPLY=( "${{files[@]}}" $(compgen -d -- "$cur") )
    return 0
}}
complete -F {f}_files -o bashdefault -o default {name}
"#
    )
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Command, ValueEnum};
    use clap_complete::Shell;

    fn cli() -> Command {
        Command::new("hermit")
            .subcommand(Command::new("build").arg(Arg::new("specs").value_name("SPEC")))
            .subcommand(Command::new("lock").arg(Arg::new("spec")))
            .subcommand(Command::new("mirror").arg(Arg::new("specs").value_name("SPEC|RECORD")))
            .subcommand(Command::new("rebuild").arg(Arg::new("record")))
            .subcommand(Command::new("doctor"))
    }

    #[test]
    fn file_arguments_get_their_patterns() {
        let c = cli();
        let globs = |name: &str| super::file_patterns(c.find_subcommand(name).unwrap());
        assert_eq!(globs("build"), ["*.toml"]);
        assert_eq!(globs("lock"), ["*.toml"]);
        assert_eq!(globs("mirror"), ["*.toml", "*.json"]);
        assert_eq!(globs("rebuild"), ["*.json"]);
        assert!(globs("doctor").is_empty());
        let bash = super::completion_script(Shell::Bash, cli()).unwrap();
        assert!(
            bash.contains("        build) files=( $(compgen -f -X '!*.toml' -- \"$cur\") ) ;;\n"),
            "{bash}"
        );
        assert!(!bash.contains("doctor) files"), "{bash}");
        assert!(bash.ends_with("complete -F _hermit_files -o bashdefault -o default hermit\n"));
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in Shell::value_variants() {
            let s = super::completion_script(*shell, cli()).unwrap();
            assert!(
                s.contains("rebuild") && s.contains("doctor"),
                "{shell}: {s}"
            );
        }
    }
}
