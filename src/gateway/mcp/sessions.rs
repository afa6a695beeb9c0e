//! Session-based MCP (2025-06-18, 2025-11-25) sessions, bound to who opened them. Behind the
//! gateway every caller is the same client to the MCP server, so the server cannot tell whose
//! session an `Mcp-Session-Id` is; the gateway remembers, for each session the server opened
//! through it, the token subject that opened it, and refuses the id from anyone else (404, as
//! for an unknown session, which makes a client start a new one). Ids are held as SHA-256
//! only. The table is bounded: a session idle past [`IDLE`] is forgotten, and when the table
//! is full of live sessions a new one is refused rather than an old one forgotten.

use std::collections::HashMap;
use std::sync::Mutex;

use tailpass_verify::UnixTime;

use crate::secret::SecretHash;

/// Sessions remembered at once, per MCP server.
pub const MAX_SESSIONS: usize = 10_000;
/// How long a session unused is remembered, seconds.
pub const IDLE: u64 = 3600;

/// Why a session id is not accepted, or a session not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Occurs when the id is unknown here, or was opened by another subject.
    #[error("no such MCP session for this caller; start a new one")]
    Unknown,
    /// Occurs when the table is full of live sessions.
    #[error("too many open MCP sessions; try again later")]
    Full,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    used: UnixTime,
}

/// The sessions of one MCP server, by id hash.
#[derive(Debug)]
pub struct Sessions {
    table: Mutex<HashMap<SecretHash, Entry>>,
    capacity: usize,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(MAX_SESSIONS)
    }
}

impl Sessions {
    /// A table of at most `capacity` sessions.
    pub fn new(capacity: usize) -> Sessions {
        Sessions {
            table: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Accepts session `id` from `owner` at `now` if `owner` opened it, and marks it used.
    pub fn check(&self, id: &str, owner: &str, now: UnixTime) -> Result<(), SessionError> {
        let mut table = self.table.lock().map_err(|_| SessionError::Unknown)?;
        match table.get_mut(&SecretHash::of(id)) {
            Some(entry) if entry.owner == owner && now.minus(IDLE) < entry.used => {
                entry.used = now;
                Ok(())
            }
            _ => Err(SessionError::Unknown),
        }
    }

    /// Remembers that `owner` opened session `id` at `now`.
    pub fn open(&self, id: &str, owner: &str, now: UnixTime) -> Result<(), SessionError> {
        let mut table = self.table.lock().map_err(|_| SessionError::Full)?;
        let key = SecretHash::of(id);
        if let Some(entry) = table.get(&key)
            && entry.owner != owner
        {
            return Err(SessionError::Unknown);
        }
        if table.len() >= self.capacity && !table.contains_key(&key) {
            table.retain(|_, e| now.minus(IDLE) < e.used);
            if table.len() >= self.capacity {
                return Err(SessionError::Full);
            }
        }
        table.insert(
            key,
            Entry {
                owner: owner.to_owned(),
                used: now,
            },
        );
        Ok(())
    }

    /// Forgets session `id` (ended by its owner's DELETE).
    pub fn end(&self, id: &str) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(&SecretHash::of(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_openers_only_and_the_table_refuses_when_full_of_live_ones() {
        let sessions = Sessions::new(2);
        let t = UnixTime(1_000_000);
        assert_eq!(
            sessions.check("s1", "node:a", t),
            Err(SessionError::Unknown)
        );
        sessions.open("s1", "node:a", t).unwrap();
        assert_eq!(sessions.check("s1", "node:a", t.plus(10)), Ok(()));
        assert_eq!(
            sessions.check("s1", "node:b", t.plus(10)),
            Err(SessionError::Unknown)
        );
        assert_eq!(sessions.open("s1", "node:b", t), Err(SessionError::Unknown));
        sessions.open("s2", "node:b", t).unwrap();
        assert_eq!(
            sessions.open("s3", "node:c", t.plus(20)),
            Err(SessionError::Full)
        );
        // Idle sessions are forgotten to make room; a used one is kept.
        assert_eq!(sessions.check("s1", "node:a", t.plus(IDLE)), Ok(()));
        sessions.open("s3", "node:c", t.plus(IDLE + 1)).unwrap();
        assert_eq!(
            sessions.check("s2", "node:b", t.plus(IDLE + 1)),
            Err(SessionError::Unknown)
        );
        assert_eq!(sessions.check("s1", "node:a", t.plus(IDLE + 1)), Ok(()));
        sessions.end("s1");
        assert_eq!(
            sessions.check("s1", "node:a", t.plus(IDLE + 2)),
            Err(SessionError::Unknown)
        );
    }
}
