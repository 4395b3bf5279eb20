fn main() {
    std::process::exit(voltar::cli::main());
}
