//! Raw system calls the rebooters need: entering a mount namespace and signalling a process.
#![allow(unsafe_code)]
