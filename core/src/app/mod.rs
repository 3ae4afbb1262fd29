//! What an app is, read from its source tree: the Procfile, language detection, and the
//! quoting used when a command line has to be written for `sh -c`. Pure logic shared by
//! every builder (local processes, and Dockerfiles generated for container runtimes).

pub mod container;
pub mod detect;
pub mod dockerfile;
pub mod procfile;
pub mod shell;
pub mod versions;

pub use detect::{Detected, Language, MARKERS, detect};
pub use shell::{shell_join, shell_quote};
