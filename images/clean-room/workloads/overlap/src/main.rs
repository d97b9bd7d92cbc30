//! Placeholder clean-room workload: reads its input from stdin and prints a byte count.
//! The real publisher × advertiser join with k-anonymity suppression replaces this.
#![forbid(unsafe_code)]

use std::io::Read;

fn main() {
    let mut buf = Vec::new();
    match std::io::stdin().read_to_end(&mut buf) {
        Ok(n) => println!("overlap: read {n} bytes"),
        Err(e) => {
            eprintln!("overlap: cannot read stdin: {e}");
            std::process::exit(1);
        }
    }
}
