//! A small random source for the agent's jitter (the window's opening, the lock's turn salt); no
//! cryptographic strength needed.

use jiff::Timestamp;

/// xorshift64, seeded from the process, the time and the node's name, so that agents started
/// together draw different numbers.
pub(super) struct Jitter(std::sync::Mutex<u64>);

impl Jitter {
    pub(super) fn seeded(node: &str) -> Jitter {
        let mut seed = u64::from(std::process::id()) ^ Timestamp::now().as_nanosecond() as u64;
        for b in node.bytes() {
            seed = seed.rotate_left(5) ^ u64::from(b);
        }
        Jitter(std::sync::Mutex::new(seed | 1))
    }

    /// A random number.
    pub(super) fn draw(&self) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}
