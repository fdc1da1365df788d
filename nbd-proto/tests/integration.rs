//! nbd-proto tests: the published wire bytes, and whole sessions.

mod integration {
    mod golden;
    mod pair;
}
