//! `wordcount [FILE]`: lines, words and bytes of FILE (read through a
//! preopened directory: `wasmos run --dir`, or the task's sandbox directory)
//! or of stdin (`--input FILE` on `wasmos run` and `wasmos submit`).

use std::io::Read;

fn main() {
    let mut data = Vec::new();
    let name = match std::env::args().nth(1) {
        Some(path) => {
            if let Err(e) = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
                eprintln!("wordcount: cannot read {path}: {e}");
                std::process::exit(1);
            }
            path
        }
        None => {
            if let Err(e) = std::io::stdin().read_to_end(&mut data) {
                eprintln!("wordcount: cannot read stdin: {e}");
                std::process::exit(1);
            }
            "-".to_string()
        }
    };
    let text = String::from_utf8_lossy(&data);
    let lines = data.iter().filter(|&&b| b == b'\n').count();
    let words = text.split_whitespace().count();
    println!("{lines} {words} {} {name}", data.len());
}
