// TEMPORARY local check, deleted after use.
use lightningdot::conversion::export_pretraining_pt;
use lightningdot::device::CpuBackend;
use lightningdot::model::{BiEncoderConfig, BiEncoderForPretraining, EncoderConfig};

#[test]
fn full_size_export_timing() {
    let cfg = BiEncoderConfig {
        img: EncoderConfig::resolve(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/img_base.json")).unwrap(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let model = BiEncoderForPretraining::<CpuBackend>::new(&cfg, &Default::default());
    for (half, name) in [(false, "/tmp/exp/LightningDot.f32.pt"), (true, "/tmp/exp/LightningDot.pt")] {
        let t = std::time::Instant::now();
        let n = export_pretraining_pt(&model, std::path::Path::new(name), half).unwrap();
        eprintln!("{name}: {n} keys in {:.1}s", t.elapsed().as_secs_f64());
    }
}
