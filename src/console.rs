//! What the command-line tools (`kitara check`, `kitara simulate`) print for a person or
//! a pipe. `println!` panics when the reader has gone away (`kitara simulate | head -2`);
//! a report's reader may stop reading whenever it likes, so a closed pipe ends the
//! output quietly instead, as other Unix tools do. The exit code still tells the verdict.

use std::io::Write;

/// Prints one line of a report; a reader that went away is not an error.
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.write_all(b"\n"))
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("cannot write the report: {e}");
    }
}

/// `println!` for reports: see `line`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}
