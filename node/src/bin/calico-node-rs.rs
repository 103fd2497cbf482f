fn main() {
    println!("calico-node-rs: not yet wired");
}
