//! The README's "Five minutes with garrison" is a script, and this test runs
//! it: every command of the section's code blocks, in order, through `bash
//! -c` against a fresh `garrison dev` cluster, with `garrison` on the `PATH`
//! being the binary just built and `~` a temporary home. What the README
//! shows a command printing is what it must print, so the tour cannot drift
//! from the code (as it did when the first transaction moved from index 2
//! to 3 and the rejected one started saying "version 4").
//!
//! The README's convention, which this file defines:
//! - A code line that does not start with `#` is a command. A `#` after
//!   whitespace starts its explanation, which is not run.
//! - A comment line starting with `#` and three spaces, under a command,
//!   is a line the command prints on standard output. The lines are
//!   compared after trimming; blank output lines are ignored; the user's
//!   home directory is printed as `~`. Where the README shows output, the
//!   command must print exactly those lines; where it shows none, it may
//!   print anything.
//! - In those lines `<...>` stands for text that differs from run to run,
//!   and a named placeholder such as `<erin's key>` stands for the text
//!   printed there the first time it appears; later lines and commands
//!   that name it mean that same text.
//! - Any other comment line is an explanation.
//! - A command must exit 0, except one the README shows printing `rejected
//!   ...`: that is `garrison tx` refusing a transaction, and must exit
//!   [`EXIT_REJECTED`].
//!
//! A command that fails because the cluster is unavailable (the `kill -9`
//! of a node can leave a group without a leader for a moment) is run again
//! for up to [`UNAVAILABLE_WAIT`]. The prose about stopping and restarting
//! `garrison dev` is not run: `tests/process.rs` covers restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use garrison::cli::ops::EXIT_REJECTED;

const BIN: &str = env!("CARGO_BIN_EXE_garrison");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
/// The heading of the section this test runs.
const SECTION: &str = "## Five minutes with garrison";
/// How a README line showing a command's output starts.
const OUTPUT_PREFIX: &str = "#   ";
/// Generous bound for `garrison dev` to say its cluster is up.
const DEV_UP_WAIT: Duration = Duration::from_secs(120);
/// Generous bound for one command to finish.
const COMMAND_WAIT: Duration = Duration::from_secs(120);
/// How long a command failing with "unavailable" is tried again.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(60);
/// How long `garrison dev` gets to stop its nodes after SIGINT.
const DEV_STOP_WAIT: Duration = Duration::from_secs(30);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);
/// How many times `garrison dev` is started on other ports if its ports
/// were taken.
const DEV_START_ATTEMPTS: usize = 5;
/// What a command's standard error says when the cluster (or a group's
/// leader) is not there right now.
const UNAVAILABLE: [&str; 4] = [
    "unavailable",
    "no garrison node reachable",
    "cannot reach the cluster",
    "gave up after",
];

/// A line the README shows a command printing.
#[derive(Debug)]
struct Expected {
    /// Its line number in README.md.
    line: usize,
    /// The text, trimmed, without the `#   `.
    text: String,
}

/// One command of the tour.
#[derive(Debug)]
struct Step {
    /// Its line number in README.md.
    line: usize,
    /// The command, without its explanation.
    command: String,
    /// What the README shows it printing (possibly nothing).
    expected: Vec<Expected>,
}

impl Step {
    /// The exit code the README implies.
    fn expected_code(&self) -> i32 {
        match self.expected.first() {
            Some(e) if e.text.starts_with("rejected ") => EXIT_REJECTED,
            _ => 0,
        }
    }
}

/// The code lines of the section, with their line numbers: lines indented
/// four spaces (or a tab) and lines inside ``` fences. The next heading
/// outside a fence ends the section.
fn code_lines(readme: &str) -> Vec<(usize, &str)> {
    let mut lines = readme.lines().enumerate().map(|(i, l)| (i + 1, l));
    assert!(
        lines.any(|(_, l)| l.trim_end() == SECTION),
        "README.md has no line {SECTION:?}; update tests/readme.rs if the section was renamed"
    );
    let mut fenced = false;
    let mut code = Vec::new();
    for (n, line) in lines {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced || line.starts_with("    ") || line.starts_with('\t') {
            code.push((n, line.trim()));
        } else if line.starts_with('#') {
            break;
        }
    }
    code
}

/// The section's commands and the output the README shows for each.
fn tour(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (line, text) in code_lines(readme) {
        if text.is_empty() {
            continue;
        }
        if let Some(output) = text.strip_prefix(OUTPUT_PREFIX) {
            let step = steps.last_mut().unwrap_or_else(|| {
                panic!(
                    "README.md line {line}: an output line ({OUTPUT_PREFIX:?}) before any command"
                )
            });
            step.expected.push(Expected {
                line,
                text: output.trim().to_string(),
            });
        } else if !text.starts_with('#') {
            steps.push(Step {
                line,
                command: without_explanation(text).to_string(),
                expected: Vec::new(),
            });
        }
    }
    steps
}

/// `command` without a trailing `# explanation`.
fn without_explanation(command: &str) -> &str {
    let bytes = command.as_bytes();
    let start = (1..bytes.len()).find(|&i| bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace());
    command[..start.unwrap_or(command.len())].trim_end()
}

/// A piece of a README line: literal text or a placeholder.
#[derive(Debug)]
enum Piece {
    /// Text that must be there as it is.
    Text(String),
    /// `<...>`: anything, not remembered.
    Any,
    /// `<name>`: anything the first time, the same text afterwards.
    Named(String),
}

/// Splits `text` into literal text and `<placeholders>`.
fn pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some((name, before, after)) = rest.split_once('<').and_then(|(before, tail)| {
        let (name, after) = tail.split_once('>')?;
        (!name.is_empty() && !name.contains('<')).then_some((name, before, after))
    }) {
        if !before.is_empty() {
            pieces.push(Piece::Text(before.to_string()));
        }
        pieces.push(match name {
            "..." => Piece::Any,
            name => Piece::Named(name.to_string()),
        });
        rest = after;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    pieces
}

/// What the named placeholders have stood for so far.
type Bindings = BTreeMap<String, String>;

/// `command` with its placeholders replaced by what they stood for.
fn substitute(step: &Step, bindings: &Bindings) -> String {
    pieces(&step.command)
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(t) => t,
            Piece::Named(name) => bindings.get(&name).cloned().unwrap_or_else(|| {
                panic!(
                    "README.md line {}: <{name}> is used before any output line shows it",
                    step.line
                )
            }),
            Piece::Any => panic!(
                "README.md line {}: a command cannot hold <...>; name what it stands for",
                step.line
            ),
        })
        .collect()
}

/// Whether `text` is `pieces`, with placeholders bound as in `bindings`;
/// new bindings are added to `found`.
fn matches<'t>(
    pieces: &[Piece],
    text: &'t str,
    bindings: &Bindings,
    found: &mut Vec<(String, &'t str)>,
) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let literal = match first {
        Piece::Text(t) => Some(t.as_str()),
        Piece::Named(name) => bindings.get(name).map(String::as_str),
        Piece::Any => None,
    };
    if let Some(literal) = literal {
        return text
            .strip_prefix(literal)
            .is_some_and(|after| matches(rest, after, bindings, found));
    }
    // A placeholder stands for at least one character.
    for end in (1..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        let mark = found.len();
        if matches(rest, &text[end..], bindings, found) {
            if let Piece::Named(name) = first {
                found.push((name.clone(), &text[..end]));
            }
            return true;
        }
        found.truncate(mark);
    }
    false
}

/// What a command did.
struct Ran {
    /// Its exit code (none if a signal ended it).
    code: Option<i32>,
    /// What it printed on standard output.
    stdout: String,
    /// What it printed on standard error, after what earlier attempts did.
    stderr: String,
}

impl Ran {
    /// Standard output as the README writes it: lines trimmed, blank ones
    /// left out, `home` written `~`.
    fn lines(&self, home: &Path) -> Vec<String> {
        let home = home.display().to_string();
        self.stdout
            .lines()
            .map(|l| l.replace(&home, "~").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Standard error for a failure message, if there was any.
    fn stderr_note(&self) -> String {
        match self.stderr.trim() {
            "" => String::new(),
            text => format!("\nstderr:\n{text}"),
        }
    }

    /// Whether it failed because the cluster was unavailable for a moment.
    fn looks_unavailable(&self) -> bool {
        UNAVAILABLE.iter().any(|s| self.stderr.contains(s))
    }
}

/// Compares what `step` printed with what the README shows, binding its
/// placeholders; the error says which README line is wrong.
fn compare(step: &Step, actual: &[String], bindings: &mut Bindings) -> Result<(), String> {
    if step.expected.is_empty() {
        return Ok(());
    }
    let whole = || format!("its whole output:\n    {}", actual.join("\n    "));
    for (i, expected) in step.expected.iter().enumerate() {
        let Some(got) = actual.get(i) else {
            return Err(format!(
                "README.md line {} shows `{}` printing\n    {}\nbut it printed only {} line(s); {}",
                expected.line,
                step.command,
                expected.text,
                actual.len(),
                whole()
            ));
        };
        let mut found = Vec::new();
        if !matches(&pieces(&expected.text), got, bindings, &mut found) {
            return Err(format!(
                "README.md line {} shows `{}` printing\n    {}\nbut line {} of its output is\n    {got}\n{}",
                expected.line,
                step.command,
                expected.text,
                i + 1,
                whole()
            ));
        }
        for (name, value) in found {
            bindings.insert(name, value.to_string());
        }
    }
    if actual.len() > step.expected.len() {
        let last = step.expected.last().map_or(step.line, |e| e.line);
        return Err(format!(
            "README.md lines {}-{last} show all that `{}` prints, but it printed {} more line(s); {}",
            step.line + 1,
            step.command,
            actual.len() - step.expected.len(),
            whole()
        ));
    }
    Ok(())
}

/// A port with nothing listening on it now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port on loopback")
        .port()
}

/// A base port for `garrison dev --base-port`: its client ports BASE+1..3
/// and peer ports BASE+101..103 are free right now.
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let base = free_port().saturating_sub(200).max(1024);
        let ports = [1, 2, 3, 101, 102, 103].map(|offset| base + offset);
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("found no six free ports for garrison dev in 100 tries");
}

/// A running `garrison dev` cluster with a home directory of its own (so
/// `~/.garrison/dev` is its data directory), stopped when dropped, also
/// when the test fails.
struct Dev {
    child: Child,
    home: tempfile::TempDir,
}

impl Dev {
    /// Starts the cluster, on other ports if the chosen ones were taken
    /// meanwhile, and waits until it says it is up.
    fn start() -> Dev {
        let mut said = String::new();
        for _ in 0..DEV_START_ATTEMPTS {
            let home = tempfile::tempdir().expect("make a temporary home");
            // The tour runs from the repository's root: its examples are
            // where a reader's would be.
            std::os::unix::fs::symlink(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
                home.path().join("examples"),
            )
            .expect("link the examples");
            let log_path = home.path().join("dev.out");
            let log = std::fs::File::create(&log_path).expect("create dev.out");
            let base = free_base_port().to_string();
            let mut command = Command::new(BIN);
            command.args(["dev", "--base-port", &base]);
            let child = with_home(&mut command, home.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup dev.out"))
                .stderr(log)
                .spawn()
                .expect("start garrison dev");
            let mut dev = Dev { child, home };
            let started = Instant::now();
            loop {
                said = std::fs::read_to_string(&log_path).unwrap_or_default();
                if said.contains("is up") {
                    return dev;
                }
                if let Ok(Some(status)) = dev.child.try_wait() {
                    let ports_taken =
                        said.contains("is not free") || said.contains("exited during start-up");
                    assert!(ports_taken, "garrison dev failed ({status}):\n{said}");
                    break;
                }
                assert!(
                    started.elapsed() < DEV_UP_WAIT,
                    "garrison dev did not come up within {DEV_UP_WAIT:?}:\n{said}"
                );
                std::thread::sleep(POLL);
            }
        }
        panic!(
            "garrison dev found its ports taken {DEV_START_ATTEMPTS} times; the last time:\n{said}"
        );
    }

    fn dev_dir(&self) -> PathBuf {
        self.home.path().join(".garrison").join("dev")
    }

    /// Runs `script` with `bash -c` as a README reader would, bounded by
    /// [`COMMAND_WAIT`].
    fn shell(&self, script: &str) -> Ran {
        let out = self.home.path().join("command.out");
        let err = self.home.path().join("command.err");
        let file = |p: &Path| std::fs::File::create(p).expect("create a command output file");
        let bin_dir = Path::new(BIN)
            .parent()
            .expect("the binary is in a directory");
        let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("a PATH");
        let mut command = Command::new("bash");
        command.arg("-c").arg(script).env("PATH", path);
        let mut child = with_home(&mut command, self.home.path())
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .stdout(file(&out))
            .stderr(file(&err))
            .spawn()
            .expect("start bash");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bash") {
                break status;
            }
            if started.elapsed() > COMMAND_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{script}` did not finish within {COMMAND_WAIT:?}");
            }
            std::thread::sleep(POLL);
        };
        Ran {
            code: status.code(),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// Runs `step`'s `command`, again while it fails because the cluster
    /// is unavailable, for up to [`UNAVAILABLE_WAIT`].
    fn run(&self, step: &Step, command: &str) -> Ran {
        let started = Instant::now();
        let mut earlier = String::new();
        loop {
            let mut ran = self.shell(command);
            let retry = ran.code != Some(step.expected_code())
                && ran.looks_unavailable()
                && started.elapsed() < UNAVAILABLE_WAIT;
            if !retry {
                ran.stderr = earlier + &ran.stderr;
                return ran;
            }
            earlier += &format!("(an earlier attempt: {})\n", ran.stderr.trim());
            std::thread::sleep(POLL);
        }
    }
}

/// `command` with `home` as the user's home and no other cluster named.
fn with_home<'c>(command: &'c mut Command, home: &Path) -> &'c mut Command {
    command
        .env("HOME", home)
        .env_remove("GARRISON_HOME")
        .env_remove("GARRISON_CLUSTER")
        .env_remove("GARRISON_CA")
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGINT is Ctrl-C: dev stops its nodes cleanly.
            // SAFETY: kill(2) on a child this test spawned and has not reaped.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
        }
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < DEV_STOP_WAIT {
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Nodes dev did not stop: those whose command line still names
        // this cluster's directory.
        let dir = self.dev_dir().display().to_string();
        for n in 1..=9 {
            let Ok(pid) = std::fs::read_to_string(self.dev_dir().join(format!("node-{n}/pid")))
            else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&dir) {
                // SAFETY: kill(2) on a node process of this test's cluster.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[test]
fn the_five_minute_tour_prints_what_the_readme_shows() {
    let readme = std::fs::read_to_string(README).expect("read README.md");
    let steps = tour(&readme);
    assert!(
        steps.iter().any(|s| !s.expected.is_empty()),
        "found no command with output in README.md's {SECTION:?} ({} commands); \
         are its code blocks indented four spaces or fenced, output lines {OUTPUT_PREFIX:?}?",
        steps.len()
    );
    let dev = Dev::start();
    let mut bindings = Bindings::new();
    for step in &steps {
        let command = substitute(step, &bindings);
        let ran = dev.run(step, &command);
        let want = step.expected_code();
        assert!(
            ran.code == Some(want),
            "README.md line {}: `{command}` exited {}, not {want} (a command must exit 0 unless \
             the README shows it printing `rejected ...`)\nstdout:\n{}{}",
            step.line,
            ran.code.map_or("on a signal".into(), |c| c.to_string()),
            ran.stdout,
            ran.stderr_note()
        );
        if let Err(e) = compare(step, &ran.lines(dev.home.path()), &mut bindings) {
            panic!("{e}{}", ran.stderr_note());
        }
    }
}

#[test]
fn the_readme_convention_tells_commands_output_and_explanations_apart() {
    let readme = "\
## Five minutes with garrison

    garrison keygen --out ~/k   # explanation
    #   public key: <k>
    # an explanation of its own
    garrison admin assign <k> gm

## Next
    garrison not-in-the-section
";
    let steps = tour(readme);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].command, "garrison keygen --out ~/k");
    assert_eq!(steps[0].line, 3);
    assert_eq!(steps[0].expected.len(), 1);
    assert_eq!(steps[0].expected[0].line, 4);
    let mut bindings = Bindings::new();
    compare(&steps[0], &["public key: abc".to_string()], &mut bindings).expect("matches");
    assert_eq!(
        substitute(&steps[1], &bindings),
        "garrison admin assign abc gm"
    );
    // A bound placeholder means the same text again.
    let again = Step {
        line: 1,
        command: String::new(),
        expected: vec![Expected {
            line: 2,
            text: "Changed player/<k> at <...>".into(),
        }],
    };
    compare(&again, &["Changed player/abc at 7".into()], &mut bindings).expect("same key");
    let err = compare(&again, &["Changed player/abd at 7".into()], &mut bindings)
        .expect_err("another key");
    assert!(err.contains("README.md line 2"), "{err}");
    let err = compare(
        &again,
        &["Changed player/abc at 7".into(), "more".into()],
        &mut bindings,
    )
    .expect_err("an extra line");
    assert!(err.contains("1 more line"), "{err}");
}
