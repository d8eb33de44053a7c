//! Rebooters: the two ways of rebooting the host (a command in the host mount namespace, or a signal to PID 1).
