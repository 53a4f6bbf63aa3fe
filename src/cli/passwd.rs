//! `fieldgate passwd`: creates and edits the local broker's password file with
//! mosquitto_passwd's flags (`-c`, `-b`, `-D`), so a Mosquitto user's habits carry over.
//! It parses arguments, reads the password (from the terminal without echo, or one line of
//! stdin) and reports errors as one line with exit code 1; the file format, hashing and the
//! atomic save belong to `mqtt::broker::auth::PasswordFile`, not here.

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use fieldgate::mqtt::broker::auth::{AuthError, PasswordFile};

use super::{Command, EXIT_USAGE};

const HELP: &str = "\
usage: fieldgate passwd [-c] FILE USER             set USER's password (asks for it)
       fieldgate passwd [-c] -b FILE USER PASSWORD  set it from the command line
       fieldgate passwd -D FILE USER                delete USER

Creates and edits the local broker's password file, in the format of mosquitto_passwd
(Mosquitto 2, PBKDF2-HMAC-SHA512 with 210,000 iterations): either tool can edit a file
the other wrote, and either broker can use it.

  -c   create FILE, replacing any file already there
  -b   batch mode: the password is the last argument (it shows up in `ps` and the shell
       history; prefer a terminal or stdin)
  -D   delete USER from FILE

Without -b the password is asked for twice without echo when stdin is a terminal; otherwise
one line is read from stdin. The file is replaced atomically with mode 0600.";

/// The longest password an MQTT CONNECT can carry.
const MAX_PASSWORD: usize = 65_535;

/// What `fieldgate passwd` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdOptions {
    pub file: PathBuf,
    pub user: String,
    pub action: Action,
}

/// Set or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add the user or replace their password. `create` starts from an empty file;
    /// `password` is the `-b` argument, None to read it from the terminal or stdin.
    Set {
        create: bool,
        password: Option<String>,
    },
    /// `-D`: remove the user.
    Delete,
}

/// Why `fieldgate passwd` failed: one line each, printed after `fieldgate passwd: `.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("unknown option {0} (--help lists the options)")]
    UnknownOption(String),
    #[error("-D deletes a user and cannot be combined with {0}")]
    DeleteWith(&'static str),
    #[error("expected {expected}, got {got} argument(s) after the options (--help shows usage)")]
    WrongArgumentCount { expected: &'static str, got: usize },
    #[error("{} does not exist; add -c to create it", .0.display())]
    NoFile(PathBuf),
    #[error("user {user:?} is not in {}", file.display())]
    NoSuchUser { user: String, file: PathBuf },
    #[error("cannot read the password: {0}")]
    ReadPassword(io::Error),
    #[error("no password on stdin (expected one line)")]
    NoPassword,
    #[error("the password is longer than the {MAX_PASSWORD} bytes MQTT can carry")]
    PasswordTooLong,
    #[error("the passwords do not match; nothing was changed")]
    Mismatch,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Runs `fieldgate passwd ARGS`: what `main` calls. Prints errors as one line to stderr
/// and exits with 1, like mosquitto_passwd.
pub fn run(args: &[&str]) -> ExitCode {
    let result = match parse(args) {
        Ok(Command::Help(text)) => {
            println!("{text}");
            Ok(())
        }
        Ok(Command::Run(options)) => execute(options),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldgate passwd: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Parses the arguments after `passwd`. Options come first (as with mosquitto_passwd), so
/// a `-b` password that starts with '-' is taken as the password; `--` ends the options.
pub fn parse(args: &[&str]) -> Result<Command<PasswdOptions>, PasswdError> {
    let (mut create, mut batch, mut delete) = (false, false, false);
    let mut rest = args;
    while let [first, tail @ ..] = rest {
        match *first {
            "-h" | "--help" => return Ok(Command::Help(HELP)),
            "-c" => create = true,
            "-b" => batch = true,
            "-D" => delete = true,
            "--" => {
                rest = tail;
                break;
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(PasswdError::UnknownOption(flag.to_owned()));
            }
            _ => break,
        }
        rest = tail;
    }
    if delete && create {
        return Err(PasswdError::DeleteWith("-c"));
    }
    if delete && batch {
        return Err(PasswdError::DeleteWith("-b"));
    }
    let (file, user, password) = match (rest, batch) {
        ([file, user], false) => (file, user, None),
        ([file, user, password], true) => (file, user, Some(password.to_string())),
        (_, batch) => {
            return Err(PasswdError::WrongArgumentCount {
                expected: if batch {
                    "FILE USER PASSWORD"
                } else {
                    "FILE USER"
                },
                got: rest.len(),
            });
        }
    };
    let action = if delete {
        Action::Delete
    } else {
        Action::Set { create, password }
    };
    Ok(Command::Run(PasswdOptions {
        file: PathBuf::from(file),
        user: user.to_string(),
        action,
    }))
}

/// Does the work: loads the file (unless creating), changes it, saves it atomically.
fn execute(options: PasswdOptions) -> Result<(), PasswdError> {
    let PasswdOptions { file, user, action } = options;
    let create = matches!(action, Action::Set { create: true, .. });
    // Loaded before asking for a password, so a typo in FILE fails before any typing.
    // `load_for_update` keeps $6$ entries, so their users can be given new passwords.
    let mut passwords = if create {
        PasswordFile::new()
    } else {
        match PasswordFile::load_for_update(&file) {
            Ok(passwords) => passwords,
            Err(AuthError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(PasswdError::NoFile(file));
            }
            Err(e) => return Err(e.into()),
        }
    };
    match action {
        Action::Delete => {
            if !passwords.remove(&user) {
                return Err(PasswdError::NoSuchUser { user, file });
            }
        }
        Action::Set { password, .. } => {
            let password = match password {
                Some(password) => password.into_bytes(),
                None => read_password()?,
            };
            passwords.set(&user, &password)?;
        }
    }
    passwords.save(&file)?;
    Ok(())
}

/// Asks twice on the terminal, without echo; or reads one line from stdin when it is not
/// a terminal (scripts, `echo secret | fieldgate passwd FILE USER`).
fn read_password() -> Result<Vec<u8>, PasswdError> {
    if io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(PasswdError::ReadPassword)?;
        let second =
            rpassword::prompt_password("Reenter password: ").map_err(PasswdError::ReadPassword)?;
        if first != second {
            return Err(PasswdError::Mismatch);
        }
        return check_length(first.into_bytes());
    }
    read_password_line(io::stdin().lock())
}

/// One line of `input`, without its line ending; bytes, not text, since an MQTT password
/// is binary data. Reads at most one byte past the longest password MQTT allows.
fn read_password_line(input: impl BufRead) -> Result<Vec<u8>, PasswdError> {
    let mut line = Vec::new();
    // MAX_PASSWORD + 2 leaves room for "\r\n"; anything longer is refused below.
    let limit = (MAX_PASSWORD + 3) as u64;
    input
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(PasswdError::ReadPassword)?;
    let ended = line.last() == Some(&b'\n');
    if ended {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.is_empty() {
        return Err(PasswdError::NoPassword);
    }
    check_length(line)
}

fn check_length(password: Vec<u8>) -> Result<Vec<u8>, PasswdError> {
    if password.len() > MAX_PASSWORD {
        return Err(PasswdError::PasswordTooLong);
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> PasswdOptions {
        match parse(args).unwrap() {
            Command::Run(options) => options,
            Command::Help(_) => panic!("help"),
        }
    }

    #[test]
    fn the_three_forms_of_mosquitto_passwd_parse() {
        let set = options(&["f", "u"]);
        assert_eq!((set.file.to_str(), set.user.as_str()), (Some("f"), "u"));
        assert_eq!(
            set.action,
            Action::Set {
                create: false,
                password: None
            }
        );
        assert_eq!(
            options(&["-c", "-b", "f", "u", "-secret"]).action,
            Action::Set {
                create: true,
                password: Some("-secret".into())
            }
        );
        assert_eq!(options(&["-D", "f", "u"]).action, Action::Delete);
        assert_eq!(options(&["--", "-f", "u"]).file.to_str(), Some("-f"));
    }

    #[test]
    fn bad_arguments_are_one_line_errors() {
        for args in [
            &["-x", "f", "u"][..],
            &["-D", "-c", "f", "u"],
            &["-D", "-b", "f", "u", "p"],
            &["f"],
            &["f", "u", "extra"],
            &["-b", "f", "u"],
            &[],
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{args:?}: {e}");
        }
        assert!(matches!(parse(&["--help"]), Ok(Command::Help(_))));
    }

    #[test]
    fn a_stdin_password_is_one_line_without_its_ending() {
        let read = |input: &[u8]| read_password_line(input).map_err(|e| e.to_string());
        assert_eq!(read(b"secret\n").unwrap(), b"secret");
        assert_eq!(read(b"secret\r\nsecond line\n").unwrap(), b"secret");
        assert_eq!(read(b"no newline").unwrap(), b"no newline");
        assert!(read(b"").unwrap_err().contains("no password"));
        let long = vec![b'x'; MAX_PASSWORD + 1];
        assert!(read(&long).unwrap_err().contains("longer"));
        assert_eq!(read(&[b'x'; MAX_PASSWORD]).unwrap().len(), MAX_PASSWORD);
    }
}
