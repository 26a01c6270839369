//! Writes a synthetic Llama-shaped bf16 model directory (real layout, N(0, 0.02²)
//! weights) for benchmarks of the registry on models larger than the fixtures:
//!
//! `cargo run -p tenpak-registry --example synth_model -- DIR HIDDEN FF VOCAB LAYERS`
//!
//! or a synthetic fine-tune of such a model (every tensor changed a little, as
//! `tenpak::synthetic::write_finetune` makes them):
//!
//! `cargo run -p tenpak-registry --example synth_model -- finetune BASE DIR SEED`

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, base, dir, seed] = a.as_slice() {
        if cmd == "finetune" {
            let names = tenpak::synthetic::write_finetune(
                std::path::Path::new(base),
                std::path::Path::new(dir),
                seed.parse()?,
            )?;
            println!("{} tensors in {dir}", names.len());
            return Ok(());
        }
    }
    let [dir, hidden, ff, vocab, layers] = a.as_slice() else {
        anyhow::bail!("usage: synth_model DIR HIDDEN FF VOCAB LAYERS");
    };
    let shape = tenpak::synthetic::LlamaShape {
        hidden: hidden.parse()?,
        ff: ff.parse()?,
        vocab: vocab.parse()?,
        layers: layers.parse()?,
    };
    let names = tenpak::synthetic::write_llama(
        std::path::Path::new(dir),
        tenpak::dtype::DType::BF16,
        shape,
    )?;
    println!("{} tensors in {dir}", names.len());
    Ok(())
}
