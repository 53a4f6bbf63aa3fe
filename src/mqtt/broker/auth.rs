//! Who may connect to the local broker and what they may do there: the password file
//! (Mosquitto 2's `mosquitto_passwd` format, PBKDF2-HMAC-SHA512) and the ACL file
//! (Mosquitto's `acl_file` format, where a matching `deny` always wins), so a Mosquitto
//! installation's files carry over. It parses, decides and saves; it must not touch
//! sockets or decide policy such as anonymous access or "no ACL file means allow all":
//! the broker does. [`PasswordFile::verify`] is slow on purpose: never call it on a reactor
//! thread (see its documentation).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};

use crate::mqtt::string::MqttString;
use crate::mqtt::topic::{self, TopicError, TopicFilter, TopicName};

/// The iteration count our own writes use: OWASP's 2023 recommendation for
/// PBKDF2-HMAC-SHA512. Reading accepts any count from 1, so files written by
/// `mosquitto_passwd` (which uses 101) keep working until their passwords are set again.
pub const DEFAULT_ITERATIONS: u32 = 210_000;

/// The password hash of `$7$` lines: PBKDF2 with HMAC-SHA512, as Mosquitto 2 uses.
static PBKDF2_ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA512;
/// mosquitto_passwd's salt length; 12 bytes encode to 16 base64 characters, no padding.
const SALT_LEN: usize = 12;
/// The derived key length of a `$7$` line: one SHA-512 output.
const HASH_LEN: usize = 64;
/// How many successful logins [`PasswordFile::verify`] remembers. When full it forgets all
/// of them: the cache only has to absorb a reconnect storm, and a bound keeps a stream of
/// distinct users from growing it without limit.
const CACHE_CAPACITY: usize = 1024;

/// Writes standard base64 with padding, as mosquitto_passwd does; reads it with or without
/// padding, because a hand-edited or other tool's file may have dropped the `=`s.
const BASE64_READ: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a password or ACL file cannot be used, or a change to one cannot be made. Each
/// message is one line that says what to fix, with the line number for file contents.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file could not be written (nothing was replaced: writes are atomic).
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A line of a password file is not `user:$7$iterations$salt$hash`.
    #[error("{}line {line}: {problem}", in_file(path.as_deref()))]
    PasswordLine {
        path: Option<PathBuf>,
        line: usize,
        problem: PasswordLineError,
    },
    /// A line of an ACL file is not a `topic`, `pattern` or `user` line.
    #[error("{}line {line}: {problem}", in_file(path.as_deref()))]
    AclLine {
        path: Option<PathBuf>,
        line: usize,
        problem: AclLineError,
    },
    /// [`PasswordFile::set`] was given a user name the file format cannot hold.
    #[error("user name {user:?} {why}")]
    InvalidUserName { user: String, why: &'static str },
    /// [`PasswordFile::set`] was given an empty password.
    #[error("the password is empty; choose a non-empty one")]
    EmptyPassword,
    /// The system's random number generator failed, so no salt could be made.
    #[error("the system random number generator failed; no salt could be made")]
    Random,
}

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordLineError {
    #[error("expected USER:$7$ITERATIONS$SALT$HASH (no ':' found)")]
    MissingColon,
    #[error("the user name before ':' is empty")]
    EmptyUser,
    #[error(
        "user {user:?} has a $6$ hash (mosquitto 1.6's single round of SHA-512, fast enough \
         to guess by brute force); set the password again with `fieldgate passwd FILE USER` \
         or mosquitto_passwd 2"
    )]
    LegacySha512 { user: String },
    #[error(
        "the password of user {user:?} is not hashed; hash it with `fieldgate passwd FILE USER` \
         (or convert the whole file with `mosquitto_passwd -U FILE`)"
    )]
    NotHashed { user: String },
    #[error("user {user:?}: unknown hash type ${id}$; only $7$ (PBKDF2-HMAC-SHA512) is supported")]
    UnknownHashType { user: String, id: String },
    #[error(
        "user {user:?}: expected $7$ITERATIONS$SALT$HASH (4 fields, each after a '$'), \
         found {fields}"
    )]
    WrongFieldCount { user: String, fields: usize },
    #[error(
        "user {user:?}: the iteration count {value:?} is not a whole number from 1 to 4294967295"
    )]
    BadIterations { user: String, value: String },
    #[error("user {user:?}: the salt is not non-empty base64")]
    BadSalt { user: String },
    #[error("user {user:?}: the hash is not the base64 of 64 bytes")]
    BadHash { user: String },
    #[error("user {user:?} appears twice (first on line {first_line}); keep one of the lines")]
    DuplicateUser { user: String, first_line: usize },
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclLineError {
    #[error(
        "unknown keyword {0:?}; a line starts with topic, pattern or user (or # for a comment)"
    )]
    UnknownKeyword(String),
    #[error("{keyword}: no topic given; expected `{keyword} [read|write|readwrite|deny] TOPIC`")]
    MissingTopic { keyword: &'static str },
    #[error("user: no user name given; expected `user NAME`")]
    MissingUser,
    #[error("{keyword} {topic:?}: {source}")]
    InvalidTopic {
        keyword: &'static str,
        topic: String,
        source: TopicError,
    },
    #[error(
        "{keyword} {topic:?}: ACL rules name topics, not shared subscriptions; drop the \
         $share/GROUP/ prefix (the group plays no part in access checks)"
    )]
    SharedSubscription {
        keyword: &'static str,
        topic: String,
    },
}

// ---- Password file ----------------------------------------------------------------------

/// A password file in Mosquitto 2's format: one `user:$7$iterations$salt$hash` line per
/// user, where `hash` is PBKDF2-HMAC-SHA512 of the password (64 bytes), salt and hash in
/// standard base64. `#` comment lines and blank lines are allowed and kept when saving.
///
/// Share it between connections behind an `Arc`; to reload, load a new one and swap the
/// `Arc`. The new value starts with an empty login cache, so a changed or removed password
/// stops working at once.
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Remembers recent successful logins (see [`PasswordFile::verify`] for why).
    cache: LoginCache,
}

/// One line of the file, kept in order so that saving preserves comments and layout.
enum Line {
    /// A comment or blank line, as it was read (without its line ending).
    Other(String),
    User {
        name: String,
        hash: StoredHash,
    },
}

enum StoredHash {
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    /// A `$6$` entry, kept only by [`PasswordFile::parse_for_update`] so that its user can
    /// be given a new password; it never verifies. The text after `user:`, as read.
    Legacy(String),
}

/// Whether `$6$` lines are an error (serving logins) or kept inert (editing the file).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LegacyLines {
    Refuse,
    Keep,
}

impl Default for PasswordFile {
    fn default() -> Self {
        PasswordFile {
            lines: Vec::new(),
            cache: LoginCache::new(),
        }
    }
}

impl PasswordFile {
    /// An empty file (what `fieldgate passwd -c` starts from).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a password file for serving logins. Refuses `$6$` lines (mosquitto 1.6's
    /// single salted SHA-512, too fast to withstand guessing) with an error that says how
    /// to re-hash them, plain-text passwords, malformed lines and duplicate users; every
    /// error carries its 1-based line number.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        Self::parse_lines(text, LegacyLines::Refuse, None)
    }

    /// Like [`PasswordFile::parse`], but keeps `$6$` lines (they never verify) so that an
    /// editor such as `fieldgate passwd` can give their users new passwords one by one.
    pub fn parse_for_update(text: &str) -> Result<Self, AuthError> {
        Self::parse_lines(text, LegacyLines::Keep, None)
    }

    /// Reads and parses `path` as [`PasswordFile::parse`] does; errors name the file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        Self::parse_lines(&read(path)?, LegacyLines::Refuse, Some(path))
    }

    /// Reads and parses `path` as [`PasswordFile::parse_for_update`] does.
    pub fn load_for_update(path: &Path) -> Result<Self, AuthError> {
        Self::parse_lines(&read(path)?, LegacyLines::Keep, Some(path))
    }

    fn parse_lines(
        text: &str,
        legacy: LegacyLines,
        path: Option<&Path>,
    ) -> Result<Self, AuthError> {
        let mut file = PasswordFile::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |problem| AuthError::PasswordLine {
                path: path.map(Path::to_path_buf),
                line,
                problem,
            };
            // Trailing blanks are an editor's doing, never part of a base64 hash.
            let trimmed = raw.trim_end();
            let first = trimmed.trim_start();
            if first.is_empty() || first.starts_with('#') {
                file.lines.push(Line::Other(trimmed.to_owned()));
                continue;
            }
            let (name, hash) = parse_entry(trimmed, legacy).map_err(error)?;
            match seen.entry(name.clone()) {
                Entry::Occupied(first) => {
                    return Err(error(PasswordLineError::DuplicateUser {
                        user: name,
                        first_line: *first.get(),
                    }));
                }
                Entry::Vacant(slot) => {
                    slot.insert(line);
                }
            }
            file.lines.push(Line::User { name, hash });
        }
        Ok(file)
    }

    /// Writes the file to `path` atomically: a temporary file in the same directory
    /// (mode 0600, the existing file's owner and group when we may set them), flushed to
    /// disk, renamed over `path`, then the directory flushed so the rename survives a
    /// power cut. A reader (the broker reloading) sees the old file or the new one, never
    /// half of one.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        write_atomically(path, self.to_string().as_bytes()).map_err(|source| AuthError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks `password` for `user`. False for an unknown user, a wrong password and a
    /// `$6$` entry kept by [`PasswordFile::parse_for_update`].
    ///
    /// # Slow on purpose
    ///
    /// A miss runs the full PBKDF2 iteration count of the user's entry (210,000 rounds for
    /// our writes: tens to hundreds of milliseconds on a Pi), which is what makes a stolen
    /// file expensive to guess from. The broker must therefore call this from
    /// `tokio::task::spawn_blocking` (or another blocking pool), never on a reactor
    /// thread, and should bound how many run at once. An unknown user costs the same
    /// rounds as a known one, so timing does not tell which user names exist.
    ///
    /// # Login cache
    ///
    /// A gateway's devices reconnect together after a LAN or broker blip; at 200,000
    /// rounds per CONNECT, fifty devices would keep a small CPU busy for seconds. So a
    /// success is remembered as HMAC-SHA512(process-random key, password) together with
    /// the entry's salt, and the same password for the same entry is then accepted after
    /// one fast HMAC (compared in constant time). Only successes are cached: a wrong guess
    /// always pays the full price. The key never leaves memory and changes each run, so a
    /// memory dump gives a guesser fast hashes of recently used passwords but nothing that
    /// is valid elsewhere. [`PasswordFile::set`] and [`PasswordFile::remove`] forget the
    /// user's entry; a reloaded file starts with an empty cache.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.find(user) {
            Some(StoredHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => {
                if self.cache.remembers(user, salt, password) {
                    return true;
                }
                let ok =
                    pbkdf2::verify(PBKDF2_ALGORITHM, *iterations, salt, password, hash).is_ok();
                if ok {
                    self.cache.remember(user, salt, password);
                }
                ok
            }
            Some(StoredHash::Legacy(_)) | None => {
                self.waste_time_like_a_real_check(password);
                false
            }
        }
    }

    /// Runs as many rounds as a real check of this file would, for a user who has no
    /// usable entry, so that a refusal takes as long whether or not the user exists.
    fn waste_time_like_a_real_check(&self, password: &[u8]) {
        let iterations = self
            .lines
            .iter()
            .find_map(|line| match line {
                Line::User {
                    hash: StoredHash::Pbkdf2 { iterations, .. },
                    ..
                } => Some(*iterations),
                _ => None,
            })
            .unwrap_or(DEFAULT_PBKDF2_ITERATIONS);
        let mut scratch = [0u8; HASH_LEN];
        pbkdf2::derive(
            PBKDF2_ALGORITHM,
            iterations,
            &[0; SALT_LEN],
            password,
            &mut scratch,
        );
    }

    /// Sets (adds or replaces) `user`'s password, hashed with a fresh random salt and
    /// [`DEFAULT_ITERATIONS`]. A replaced user keeps their place in the file.
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), AuthError> {
        self.set_with_iterations(user, password, DEFAULT_PBKDF2_ITERATIONS)
    }

    /// [`PasswordFile::set`] with a chosen iteration count: for tests that would
    /// otherwise spend seconds hashing, or for matching a slower device's budget. Prefer
    /// [`PasswordFile::set`].
    pub fn set_with_iterations(
        &mut self,
        user: &str,
        password: &[u8],
        iterations: NonZeroU32,
    ) -> Result<(), AuthError> {
        check_user_name(user)?;
        if password.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| AuthError::Random)?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::derive(PBKDF2_ALGORITHM, iterations, &salt, password, &mut hash);
        let new = StoredHash::Pbkdf2 {
            iterations,
            salt: salt.to_vec(),
            hash,
        };
        self.cache.forget(user);
        match self.lines.iter_mut().find_map(|line| match line {
            Line::User { name, hash } if name == user => Some(hash),
            _ => None,
        }) {
            Some(existing) => *existing = new,
            None => self.lines.push(Line::User {
                name: user.to_owned(),
                hash: new,
            }),
        }
        Ok(())
    }

    /// Removes `user`; false if there was no such user.
    pub fn remove(&mut self, user: &str) -> bool {
        self.cache.forget(user);
        let before = self.lines.len();
        self.lines
            .retain(|line| !matches!(line, Line::User { name, .. } if name == user));
        self.lines.len() != before
    }

    /// Whether `user` has an entry (a `$6$` one included).
    pub fn contains(&self, user: &str) -> bool {
        self.find(user).is_some()
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            Line::User { name, .. } => Some(name.as_str()),
            Line::Other(_) => None,
        })
    }

    fn find(&self, user: &str) -> Option<&StoredHash> {
        self.lines.iter().find_map(|line| match line {
            Line::User { name, hash } if name == user => Some(hash),
            _ => None,
        })
    }
}

/// [`DEFAULT_ITERATIONS`] as the type PBKDF2 takes.
const DEFAULT_PBKDF2_ITERATIONS: NonZeroU32 = match NonZeroU32::new(DEFAULT_ITERATIONS) {
    Some(n) => n,
    // DEFAULT_ITERATIONS is a non-zero literal; this arm is never taken, and being in a
    // const it would fail the build, not a run.
    None => panic!("DEFAULT_ITERATIONS must not be 0"),
};

/// Splits one non-comment line into user and hash.
fn parse_entry(line: &str, legacy: LegacyLines) -> Result<(String, StoredHash), PasswordLineError> {
    // The user name is everything up to the first ':' (mosquitto splits the same way, so a
    // user name cannot contain one); the hash never contains ':'.
    let (name, rest) = line
        .split_once(':')
        .ok_or(PasswordLineError::MissingColon)?;
    if name.is_empty() {
        return Err(PasswordLineError::EmptyUser);
    }
    let user = || name.to_owned();
    let Some(fields) = rest.strip_prefix('$') else {
        return Err(PasswordLineError::NotHashed { user: user() });
    };
    let fields: Vec<&str> = fields.split('$').collect();
    match fields[0] {
        "7" => {}
        "6" if legacy == LegacyLines::Keep => {
            return Ok((user(), StoredHash::Legacy(rest.to_owned())));
        }
        "6" => return Err(PasswordLineError::LegacySha512 { user: user() }),
        id => {
            return Err(PasswordLineError::UnknownHashType {
                user: user(),
                id: id.to_owned(),
            });
        }
    }
    let [_, iterations, salt, hash] = fields[..] else {
        return Err(PasswordLineError::WrongFieldCount {
            user: user(),
            fields: fields.len(),
        });
    };
    let iterations: NonZeroU32 =
        iterations
            .parse()
            .map_err(|_| PasswordLineError::BadIterations {
                user: user(),
                value: iterations.to_owned(),
            })?;
    let salt = BASE64_READ
        .decode(salt)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| PasswordLineError::BadSalt { user: user() })?;
    let hash: [u8; HASH_LEN] = BASE64_READ
        .decode(hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| PasswordLineError::BadHash { user: user() })?;
    Ok((
        user(),
        StoredHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        },
    ))
}

/// The names [`PasswordFile::set`] accepts: ones that survive a save and a parse, here and
/// in mosquitto, and that an MQTT CONNECT can carry.
fn check_user_name(user: &str) -> Result<(), AuthError> {
    let why = if user.is_empty() {
        Some("is empty")
    } else if user.contains(':') {
        Some("contains ':', which separates the user name from the hash in the file")
    } else if user.chars().any(char::is_control) {
        Some("contains a control character (line break, tab, NUL...)")
    } else if user.trim_start().starts_with('#') {
        Some("starts with '#', which would turn its line into a comment")
    } else if user.trim() != user {
        Some("starts or ends with a space")
    } else if MqttString::try_from(user).is_err() {
        Some("is longer than the 65,535 bytes MQTT can carry")
    } else {
        None
    };
    match why {
        Some(why) => Err(AuthError::InvalidUserName {
            user: user.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// The file's text: every line as read or set, each ending in `\n`.
impl fmt::Display for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            match line {
                Line::Other(text) => writeln!(f, "{text}")?,
                Line::User {
                    name,
                    hash:
                        StoredHash::Pbkdf2 {
                            iterations,
                            salt,
                            hash,
                        },
                } => writeln!(
                    f,
                    "{name}:$7${iterations}${}${}",
                    STANDARD.encode(salt),
                    STANDARD.encode(hash)
                )?,
                Line::User {
                    name,
                    hash: StoredHash::Legacy(rest),
                } => writeln!(f, "{name}:{rest}")?,
            }
        }
        Ok(())
    }
}

/// Names the users only: hashes stay out of logs.
impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// See [`PasswordFile::save`].
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // In the same directory, so the rename cannot cross file systems; hidden, and named
    // after our process so two editors at once do not write into one temporary file.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = dir.join(temp_name);
    // A leftover from a crashed run of a process that had our id; create_new below would
    // otherwise fail on it.
    let _ = fs::remove_file(&temp);
    let written = (|| {
        // create_new (O_EXCL) does not follow a symlink planted at the temporary name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The umask cannot widen 0600, but a restrictive one could narrow it: say it again.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        // An administrator editing the broker's file as root must not leave it owned by
        // root, unreadable by the service. Only root may chown, so failure is expected and
        // harmless for everyone else.
        if let Ok(old) = fs::metadata(path) {
            let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// Recent successful logins, so a reconnect storm is not a PBKDF2 storm (see
/// [`PasswordFile::verify`]).
struct LoginCache {
    /// None when the random number generator failed: then nothing is cached, and every
    /// check is a full one. Slower, never wrong.
    key: Option<hmac::Key>,
    entries: Mutex<HashMap<String, CachedLogin>>,
}

struct CachedLogin {
    /// The entry's salt when the login succeeded: a new password has a new salt, so an
    /// entry changed behind the cache's back cannot be matched by the old password.
    salt: Vec<u8>,
    /// HMAC-SHA512(key, password).
    tag: hmac::Tag,
}

impl LoginCache {
    fn new() -> Self {
        LoginCache {
            key: hmac::Key::generate(hmac::HMAC_SHA512, &SystemRandom::new()).ok(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedLogin>> {
        // A panic while holding the lock cannot leave a half-written entry (each is
        // inserted or removed whole), so a poisoned map is still a correct map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remembers(&self, user: &str, salt: &[u8], password: &[u8]) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let entries = self.entries();
        entries.get(user).is_some_and(|cached| {
            // The salt is not secret; the password check is ring's constant-time compare.
            cached.salt == salt && hmac::verify(key, password, cached.tag.as_ref()).is_ok()
        })
    }

    fn remember(&self, user: &str, salt: &[u8], password: &[u8]) {
        let Some(key) = &self.key else {
            return;
        };
        let login = CachedLogin {
            salt: salt.to_vec(),
            tag: hmac::sign(key, password),
        };
        let mut entries = self.entries();
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(user) {
            entries.clear();
        }
        entries.insert(user.to_owned(), login);
    }

    fn forget(&self, user: &str) {
        self.entries().remove(user);
    }
}

// ---- ACL --------------------------------------------------------------------------------

/// What a rule allows: the access word of an ACL line (none means `readwrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages and subscribe.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever other rules allow: a matching deny always wins.
    Deny,
}

impl Access {
    fn from_word(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Access::ReadWrite, _) | (Access::Read, Want::Read) | (Access::Write, Want::Write)
        )
    }
}

#[derive(Clone, Copy)]
enum Want {
    Read,
    Write,
}

/// An ACL in Mosquitto's `acl_file` format:
///
/// ```text
/// # anonymous clients (lines before any `user` line)
/// topic read public/#
/// user alice
/// topic readwrite alice/#
/// topic deny alice/secret/#
/// # every client, authenticated or not: %u is the user name, %c the client id
/// pattern write devices/%c/state
/// ```
///
/// `topic [ACCESS] TOPIC` lines before the first `user NAME` line apply to clients that
/// connected without a user name, after it to that user (a name may have several blocks).
/// `pattern [ACCESS] TOPIC` lines apply to all clients wherever they stand. ACCESS is
/// `read`, `write`, `readwrite` (the default) or `deny`; TOPIC is a topic filter (the rest
/// of the line, so it may contain spaces). An action is allowed when some rule grants it
/// and no `deny` rule matches it: deny wins, in any order.
///
/// Substitution in patterns: a pattern with `%u` does not apply to a client without a
/// user name. A user name or client id containing `+`, `#` or `/` could widen the rule
/// (user `#` would turn `pattern read users/%u/#` into `users/#/#`), so such a
/// substitution makes an allowing pattern match nothing, and a `deny` pattern match
/// everything below the levels before its first placeholder (`deny private/%u/x` becomes
/// `private/#`): we cannot tell what it was meant to deny, so it denies all it might have.
///
/// Having no ACL at all is the broker's decision (allow everything); an `Acl` that grants
/// nothing allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<TopicRule>,
    users: HashMap<String, Vec<TopicRule>>,
    patterns: Vec<PatternRule>,
}

#[derive(Debug, Clone)]
struct TopicRule {
    access: Access,
    filter: TopicFilter,
}

#[derive(Debug, Clone)]
struct PatternRule {
    access: Access,
    /// The filter with `%u`/`%c` still in it; checked at parse time to be a valid filter
    /// once they are replaced by a plain level.
    template: String,
}

/// Whose `topic` lines the parser is reading.
enum Block {
    Anonymous,
    User(String),
}

impl Acl {
    /// Parses an ACL file's text. Errors carry their 1-based line number.
    pub fn parse(text: &str) -> Result<Acl, AuthError> {
        Self::parse_lines(text, None)
    }

    /// Reads and parses `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        Self::parse_lines(&read(path)?, Some(path))
    }

    fn parse_lines(text: &str, path: Option<&Path>) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut block = Block::Anonymous;
        for (index, raw) in text.lines().enumerate() {
            let error = |problem| AuthError::AclLine {
                path: path.map(Path::to_path_buf),
                line: index + 1,
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error(AclLineError::MissingUser));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    block = Block::User(rest.to_owned());
                }
                "topic" => {
                    let (access, topic) = access_and_topic("topic", rest).map_err(error)?;
                    let filter = rule_filter("topic", topic, topic).map_err(error)?;
                    let rule = TopicRule { access, filter };
                    match &block {
                        Block::Anonymous => acl.anonymous.push(rule),
                        Block::User(name) => acl.users.entry(name.clone()).or_default().push(rule),
                    }
                }
                "pattern" => {
                    let (access, template) = access_and_topic("pattern", rest).map_err(error)?;
                    // Validate with each placeholder as a plain level character, which is
                    // what a safe substitution always is.
                    let sample = template.replace("%u", "u").replace("%c", "c");
                    rule_filter("pattern", template, &sample).map_err(error)?;
                    acl.patterns.push(PatternRule {
                        access,
                        template: template.to_owned(),
                    });
                }
                other => return Err(error(AclLineError::UnknownKeyword(other.to_owned()))),
            }
        }
        Ok(acl)
    }

    /// May this client publish to `topic`?
    pub fn can_publish(&self, user: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        let name = topic.as_str();
        self.decide(user, client_id, Want::Write, |rule| {
            topic::matches(rule, name)
        })
    }

    /// May this client be sent a message published to `topic`? The broker asks for every
    /// message it delivers (retained ones included), because a subscription allowed as a
    /// whole may still reach topics a `deny` rule covers.
    pub fn can_receive(&self, user: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        let name = topic.as_str();
        self.decide(user, client_id, Want::Read, |rule| {
            topic::matches(rule, name)
        })
    }

    /// May this client subscribe to `filter`? Yes when some read rule covers the whole
    /// filter (every topic it can match, the rule matches too: `sensors/#` covers
    /// `sensors/+/temp`, `sensors/+` does not cover `sensors/#`) and no deny rule covers
    /// the whole filter. A deny rule that covers only part of it (`deny sensors/secret/#`
    /// under a subscription to `sensors/#`) does not refuse the subscription: the
    /// subscriber could not receive anything through it, which is what
    /// [`Acl::can_receive`] enforces per message. The `$share/GROUP/` prefix of a shared
    /// subscription plays no part.
    pub fn can_subscribe(&self, user: Option<&str>, client_id: &str, filter: &TopicFilter) -> bool {
        let wanted = filter.filter();
        self.decide(user, client_id, Want::Read, |rule| covers(rule, wanted))
    }

    /// Deny wins: false as soon as a deny rule `applies`; otherwise true if a rule that
    /// grants `want` applies.
    fn decide(
        &self,
        user: Option<&str>,
        client_id: &str,
        want: Want,
        applies: impl Fn(&str) -> bool,
    ) -> bool {
        let topic_rules = match user {
            None => self.anonymous.as_slice(),
            Some(name) => self.users.get(name).map_or(&[][..], Vec::as_slice),
        };
        let mut granted = false;
        for rule in topic_rules {
            let hit = applies(rule.filter.as_str());
            if hit && rule.access == Access::Deny {
                return false;
            }
            granted |= hit && rule.access.grants(want);
        }
        for rule in &self.patterns {
            // Only rules that could change the answer need substituting (which allocates).
            if !(rule.access == Access::Deny || (!granted && rule.access.grants(want))) {
                continue;
            }
            let Some(filter) = substitute(rule, user, client_id) else {
                continue;
            };
            let hit = applies(&filter);
            if hit && rule.access == Access::Deny {
                return false;
            }
            granted |= hit && rule.access.grants(want);
        }
        granted
    }
}

/// The first whitespace-separated word of `text` and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// `[ACCESS] TOPIC`: an access word followed by a topic, or a topic alone (readwrite).
fn access_and_topic<'a>(
    keyword: &'static str,
    rest: &'a str,
) -> Result<(Access, &'a str), AclLineError> {
    let (first, after) = split_word(rest);
    let (access, topic) = match Access::from_word(first) {
        Some(access) => (access, after),
        None => (Access::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err(AclLineError::MissingTopic { keyword });
    }
    Ok((access, topic))
}

/// Checks `checked` (the rule's topic, or a pattern with its placeholders filled in) as
/// a topic filter that is not a shared subscription, reporting errors against `shown`.
fn rule_filter(
    keyword: &'static str,
    shown: &str,
    checked: &str,
) -> Result<TopicFilter, AclLineError> {
    let filter = TopicFilter::try_from(checked).map_err(|source| AclLineError::InvalidTopic {
        keyword,
        topic: shown.to_owned(),
        source,
    })?;
    if filter.is_shared() {
        return Err(AclLineError::SharedSubscription {
            keyword,
            topic: shown.to_owned(),
        });
    }
    Ok(filter)
}

/// The filter `rule` stands for for this client, or None when it does not apply (see
/// [`Acl`] on substitution).
fn substitute(rule: &PatternRule, user: Option<&str>, client_id: &str) -> Option<String> {
    let template = rule.template.as_str();
    let has_user = template.contains("%u");
    let has_client = template.contains("%c");
    if has_user && user.is_none() {
        return None;
    }
    let user = user.unwrap_or_default();
    let unsafe_value = |value: &str| value.contains(['+', '#', '/']);
    let is_unsafe = (has_user && unsafe_value(user)) || (has_client && unsafe_value(client_id));
    if !is_unsafe {
        return Some(template.replace("%u", user).replace("%c", client_id));
    }
    if rule.access != Access::Deny {
        return None;
    }
    // Deny conservatively: keep the levels before the first placeholder, deny all below.
    let kept: Vec<&str> = template
        .split('/')
        .take_while(|level| !level.contains("%u") && !level.contains("%c"))
        .chain(std::iter::once("#"))
        .collect();
    Some(kept.join("/"))
}

/// Does the ACL rule filter `rule` match every topic name that the subscription filter
/// `sub` matches? Both are valid filters without a `$share/` prefix.
fn covers(rule: &str, sub: &str) -> bool {
    // [MQTT-4.7.2-1]: a rule starting with a wildcard matches no `$...` topic, so it
    // cannot cover a subscription whose first level names one.
    let rule_starts_wild = matches!(rule.split('/').next(), Some("+" | "#"));
    if rule_starts_wild && sub.starts_with('$') {
        return false;
    }
    // A lone '#' matches every topic (at least one level, possibly empty), exactly as
    // "+/#" does; spelled that way, the walk below needs no special case for a '#' that
    // cannot match "no more levels" because there is no parent level.
    if sub == "#" {
        return covers(rule, "+/#");
    }
    let mut rule_levels = rule.split('/');
    let mut sub_levels = sub.split('/');
    loop {
        match (rule_levels.next(), sub_levels.next()) {
            // '#' matches whatever is left, the parent level included.
            (Some("#"), _) => return true,
            (None, None) => return true,
            // The subscription reaches any depth from here, none included; only '#' does.
            (_, Some("#")) => return false,
            // '+' covers any one level: a name's level or the subscription's '+'.
            (Some("+"), Some(_)) => {}
            // Equal literals. A literal rule level never covers the subscription's '+'.
            (Some(r), Some(s)) if r == s && s != "+" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_internal_client_is_taken_only_with_its_exact_secret() {
        let login = InternalClient::generate().unwrap();
        let other = InternalClient::generate().unwrap();
        assert_ne!(
            login.username(),
            other.username(),
            "a random part in each name"
        );
        assert!(login.username().starts_with("fieldgate-internal-"));
        assert!(login.accepts(Some(login.password())));
        assert!(!login.accepts(Some(other.password())));
        assert!(!login.accepts(None));
        assert!(
            !login.accepts(Some(&login.password()[1..])),
            "a prefix is not the secret"
        );
        assert!(login.is(Some(login.username())));
        assert!(!login.is(None));
        assert!(!format!("{login:?}").contains(std::str::from_utf8(login.password()).unwrap()));
    }

    const FAST: NonZeroU32 = match NonZeroU32::new(10) {
        Some(n) => n,
        None => panic!(),
    };

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn line_of(e: AuthError) -> (usize, String) {
        match e {
            AuthError::PasswordLine { line, problem, .. } => (line, problem.to_string()),
            AuthError::AclLine { line, problem, .. } => (line, problem.to_string()),
            other => panic!("not a line error: {other}"),
        }
    }

    // A line mosquitto_passwd 2.0.11 wrote for user "user", password "pass".
    const MOSQUITTO_LINE: &str = "user:$7$101$v4TYQndOYGVuUueY$HNMKo4AnJYbudPydXqX/V2pfCywovdK/\
        DygmnC4LPEehDdNRtitjqBwIb/sX9a0myi7OOvqcbrbv+5yjoAhuKA==";

    #[test]
    fn a_line_written_by_mosquitto_passwd_verifies() {
        let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
        assert!(file.verify("user", b"pass"));
        assert!(!file.verify("user", b"Pass"));
        assert!(!file.verify("nobody", b"pass"));
    }

    #[test]
    fn a_file_reads_back_what_it_writes_comments_and_order_included() {
        let mut file =
            PasswordFile::parse(&format!("# users\n\n{MOSQUITTO_LINE}\n  # indented\n")).unwrap();
        file.set_with_iterations("zed", b"pw", FAST).unwrap();
        file.set_with_iterations("user", b"new", FAST).unwrap();
        let text = file.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["# users", ""]);
        assert!(lines[2].starts_with("user:$7$10$"), "{text}");
        assert_eq!(lines[3], "  # indented");
        assert!(lines[4].starts_with("zed:$7$10$"), "{text}");
        let again = PasswordFile::parse(&text).unwrap();
        assert!(again.verify("user", b"new") && again.verify("zed", b"pw"));
        assert!(!again.verify("user", b"pass"));
        assert_eq!(again.to_string(), text);
    }

    #[test]
    fn our_lines_have_mosquittos_shape_and_the_strong_default_count() {
        let mut file = PasswordFile::new();
        file.set("u", b"p").unwrap();
        let text = file.to_string();
        let fields: Vec<&str> = text.trim_end().split('$').collect();
        assert_eq!(fields[..3], ["u:", "7", "210000"]);
        assert_eq!(fields[3].len(), 16, "12-byte salt");
        assert_eq!(fields[4].len(), 88, "64-byte hash with padding");
        assert!(fields[4].ends_with("=="));
    }

    #[test]
    fn each_set_uses_a_fresh_salt() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("a", b"same", FAST).unwrap();
        file.set_with_iterations("b", b"same", FAST).unwrap();
        let text = file.to_string();
        let hashes: Vec<&str> = text.lines().map(|l| l.split_once(':').unwrap().1).collect();
        assert_ne!(hashes[0], hashes[1]);
    }

    #[test]
    fn sha512_lines_are_refused_with_a_re_hash_hint_unless_editing() {
        let text = "ok:$6$c2FsdA==$aGFzaA==\n";
        let (line, message) = line_of(PasswordFile::parse(&format!("\n{text}")).unwrap_err());
        assert_eq!(line, 2);
        assert!(
            message.contains("$6$") && message.contains("fieldgate passwd"),
            "{message}"
        );
        let mut file = PasswordFile::parse_for_update(text).unwrap();
        assert!(file.contains("ok") && !file.verify("ok", b"x"));
        assert_eq!(file.to_string(), text, "kept as it was");
        file.set_with_iterations("ok", b"x", FAST).unwrap();
        assert!(
            PasswordFile::parse(&file.to_string())
                .unwrap()
                .verify("ok", b"x")
        );
    }

    #[test]
    fn malformed_lines_name_their_line_and_problem() {
        let hash = STANDARD.encode([0u8; 64]);
        let cases = [
            ("nocolon", "no ':'"),
            (":$7$1$c2FsdA==$x", "empty"),
            ("u:plain", "not hashed"),
            ("u:$5$x", "unknown hash type $5$"),
            ("u:$7$1$c2FsdA==", "found 3"),
            ("u:$7$1$c2FsdA==$x$y", "found 5"),
            (&format!("u:$7$0$c2FsdA==${hash}"), "iteration count \"0\""),
            (&format!("u:$7$x$c2FsdA==${hash}"), "iteration count"),
            (&format!("u:$7$1$!!${hash}"), "salt"),
            (&format!("u:$7$1$${hash}"), "salt"),
            ("u:$7$1$c2FsdA==$c2hvcnQ=", "64 bytes"),
        ];
        for (bad, expected) in cases {
            let text = format!("# header\n{bad}\n");
            let (line, message) = line_of(PasswordFile::parse(&text).unwrap_err());
            assert_eq!(line, 2, "{bad}");
            assert!(message.contains(expected), "{bad}: {message}");
        }
    }

    #[test]
    fn a_duplicate_user_names_both_lines() {
        let text = format!("{MOSQUITTO_LINE}\n#\n{MOSQUITTO_LINE}\n");
        let (line, message) = line_of(PasswordFile::parse(&text).unwrap_err());
        assert_eq!(line, 3);
        assert!(message.contains("first on line 1"), "{message}");
    }

    #[test]
    fn hashes_without_base64_padding_and_crlf_lines_are_read() {
        let unpadded = MOSQUITTO_LINE.trim_end_matches('=');
        let file = PasswordFile::parse(&format!("{unpadded}  \r\n")).unwrap();
        assert!(file.verify("user", b"pass"));
    }

    #[test]
    fn user_names_that_would_not_survive_the_file_are_refused() {
        let mut file = PasswordFile::new();
        for bad in ["", "a:b", "a\nb", "#a", " a", "a ", "a\0b"] {
            let e = file.set_with_iterations(bad, b"p", FAST).unwrap_err();
            assert!(
                matches!(e, AuthError::InvalidUserName { .. }),
                "{bad:?}: {e}"
            );
        }
        assert!(matches!(
            file.set_with_iterations("a", b"", FAST),
            Err(AuthError::EmptyPassword)
        ));
        // Spaces inside a name and non-ASCII are fine.
        file.set_with_iterations("Jörg Müller", b"p", FAST).unwrap();
        assert!(
            PasswordFile::parse(&file.to_string())
                .unwrap()
                .verify("Jörg Müller", b"p")
        );
    }

    #[test]
    fn remove_drops_the_user_and_their_cached_login() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("a", b"p", FAST).unwrap();
        assert!(file.verify("a", b"p"));
        assert!(file.remove("a"));
        assert!(!file.remove("a"));
        assert!(!file.verify("a", b"p"));
        assert_eq!(file.users().count(), 0);
    }

    #[test]
    fn the_cache_accepts_only_the_password_that_succeeded_for_the_current_entry() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("a", b"old", FAST).unwrap();
        assert!(file.verify("a", b"old"));
        assert!(file.cache.remembers("a", salt_of(&file, "a"), b"old"));
        assert!(!file.cache.remembers("a", salt_of(&file, "a"), b"other"));
        assert!(!file.verify("a", b"other"));
        file.set_with_iterations("a", b"new", FAST).unwrap();
        assert!(
            !file.verify("a", b"old"),
            "a new password forgets the old one"
        );
        assert!(file.verify("a", b"new"));
        // A cached login is bound to the salt it succeeded with.
        assert!(!file.cache.remembers("a", b"another salt", b"new"));
    }

    fn salt_of<'a>(file: &'a PasswordFile, user: &str) -> &'a [u8] {
        match file.find(user) {
            Some(StoredHash::Pbkdf2 { salt, .. }) => salt,
            _ => panic!("no PBKDF2 entry for {user}"),
        }
    }

    #[test]
    fn the_cache_stays_bounded() {
        let file = PasswordFile::new();
        for i in 0..CACHE_CAPACITY + 10 {
            file.cache.remember(&format!("u{i}"), b"s", b"p");
        }
        assert!(file.cache.entries().len() <= CACHE_CAPACITY);
    }

    #[test]
    fn debug_output_names_users_but_not_hashes() {
        let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
        let debug = format!("{file:?}");
        assert!(
            debug.contains("\"user\"") && !debug.contains("$7$"),
            "{debug}"
        );
    }

    #[test]
    fn save_replaces_the_file_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fieldgate-auth-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        fs::write(&path, "old contents\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = PasswordFile::new();
        file.set_with_iterations("a", b"p", FAST).unwrap();
        file.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(PasswordFile::load(&path).unwrap().verify("a", b"p"));
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_errors_name_the_file_and_the_line() {
        let dir = std::env::temp_dir().join(format!("fieldgate-auth-load-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acl");
        fs::write(&path, "topic read a\nbogus\n").unwrap();
        let message = Acl::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: line 2: ", path.display())),
            "{message}"
        );
        let missing = PasswordFile::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, AuthError::Read { .. }), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }

    // ---- ACL ----

    #[test]
    fn covers_follows_the_wildcards() {
        let cases = [
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/+", "sensors/#", false),
            ("sensors/+", "sensors/a", true),
            ("sensors/+", "sensors/+", true),
            ("sensors/a", "sensors/+", false),
            ("sensors/+/temp", "sensors/+/+", false),
            ("a/+/#", "a/#", false),
            ("#", "anything/at/all", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a", "a/b", false),
            ("+/#", "#", true),
            ("+/#", "a/#", true),
            ("+/+/#", "#", false),
            ("a/b", "a", false),
        ];
        for (rule, sub, expected) in cases {
            assert_eq!(covers(rule, sub), expected, "{rule} covers {sub}");
        }
    }

    #[test]
    fn a_shared_subscription_is_checked_without_its_share_prefix() {
        let acl = Acl::parse("topic read jobs/#\n").unwrap();
        assert!(acl.can_subscribe(None, "c", &filter("$share/workers/jobs/+")));
        assert!(!acl.can_subscribe(None, "c", &filter("$share/jobs/other")));
    }

    #[test]
    fn a_pattern_with_an_unsafe_substitution_grants_nothing_and_denies_widely() {
        let acl = Acl::parse(
            "pattern readwrite users/%u/#\npattern deny private/%c/secret\nuser #\ntopic read private/#\n",
        )
        .unwrap();
        assert!(!acl.can_receive(Some("#"), "c", &name("users/bob/x")));
        assert!(!acl.can_receive(Some("a/b"), "c", &name("users/a/b")));
        assert!(acl.can_receive(Some("#"), "ok", &name("private/other/x")));
        // Client id "+" cannot be substituted: the deny pattern covers all of private/.
        assert!(!acl.can_receive(Some("#"), "+", &name("private/other/x")));
    }
}

/// The credentials of a client inside the broker's own process (the gateway's client):
/// it connects whatever the password file says and may do anything, being the gateway
/// itself. Made at random at each start and never written anywhere; the broker trusts a
/// user name only from a connection that proved the secret.
#[derive(Clone)]
pub struct InternalClient {
    username: String,
    secret: String,
}

impl fmt::Debug for InternalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalClient")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl InternalClient {
    /// New random credentials. The user name has a random part too, so that it never
    /// meets a user of the password file or a rule of the ACL file.
    pub fn generate() -> Result<InternalClient, AuthError> {
        let mut bytes = [0u8; 4 + 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| AuthError::Random)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Ok(InternalClient {
            username: format!("fieldgate-internal-{}", hex(&bytes[..4])),
            secret: hex(&bytes[4..]),
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// Whether `username` is this client's (the broker checked the secret at CONNECT).
    pub fn is(&self, username: Option<&str>) -> bool {
        username == Some(self.username.as_str())
    }

    /// Whether `password` is the secret, compared in constant time.
    pub fn accepts(&self, password: Option<&[u8]>) -> bool {
        let Some(password) = password else {
            return false;
        };
        let secret = self.secret.as_bytes();
        password.len() == secret.len()
            && password
                .iter()
                .zip(secret)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}
