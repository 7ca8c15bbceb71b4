//! The UNITER single-stream cross-encoder used to re-rank LightningDOT's top-K
//! (`UniterForImageTextRetrieval`, ChenRocks/UNITER `model/itm.py`; spec §8, §10).
//!
//! Unlike the bi-encoder's image tower, text and regions share ONE sequence: `[CLS] w… [SEP]`
//! (type 0, positions `0..L`) followed by the image regions (type 1, 7-d boxes). Rows of a batch
//! are compacted with `gather_index` so that each row's regions follow its real tokens
//! (fixtures README "UNITER ITM cross-encoder", "Model semantics"). The score is
//! `rank_output(tanh(pooler.dense(h_0)))`.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use super::config::EncoderConfig;
use super::embeddings::{ImageEmbeddings, TextEmbeddings};
use super::stages::first_token;
use super::transformer::{Encoder, Pooler};

/// Triplet margin of UNITER's ITM fine-tuning (`train-itm-*-hn.json`, `margin = 0.2`).
pub const RANK_MARGIN: f64 = 0.2;

/// One cross-encoder batch as UNITER's `itm_eval_collate` / `itm_rank_collate` builds it.
#[derive(Debug, Clone)]
pub struct ItmInput<B: Backend> {
    /// `[batch, max_tl]` `[CLS] w… [SEP]` ids, right-padded with 0 (positions are `arange(max_tl)`).
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, max_nbb, 2048]` region features, zero rows after each image's `num_bb`.
    pub img_feat: Tensor<B, 3>,
    /// `[batch, max_nbb, 7]` boxes `[x1, y1, x2, y2, w, h, w*h]`.
    pub img_pos_feat: Tensor<B, 3>,
    /// `[batch, out]`: 1 for the first `tl_i + nbb_i` positions of the compacted row, 0 after.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[batch, out]` indices into `cat([txt (max_tl), img (max_nbb)])` of every compacted
    /// position (UNITER `get_gather_index`); values in `0..max_tl + max_nbb`.
    pub gather_index: Tensor<B, 2, Int>,
}

/// Every stage of one forward pass, named as in uniter_itm/expected/outputs.safetensors.
#[derive(Debug, Clone)]
pub struct ItmStages<B: Backend> {
    /// `[batch, max_tl, H]` `UniterTextEmbeddings`.
    pub txt_embeddings: Tensor<B, 3>,
    /// `[batch, max_nbb, H]` `UniterImageEmbeddings`.
    pub img_embeddings: Tensor<B, 3>,
    /// `[batch, out, H]` the gathered input of layer 0.
    pub embedding_output: Tensor<B, 3>,
    /// `[batch, out, H]` last layer output.
    pub sequence_output: Tensor<B, 3>,
    /// `[batch, H]` `tanh(pooler.dense(h_0))`.
    pub pooled: Tensor<B, 2>,
    /// `[batch, 1]` the re-ranking score.
    pub rank_scores: Tensor<B, 2>,
    /// `[batch, 2]` `itm_output(pooled)`, when the checkpoint has the ITM head (reference only).
    pub itm_scores: Option<Tensor<B, 2>>,
}

impl<B: Backend> ItmStages<B> {
    /// `(stage, tensor)` pairs, stage names as in expected/outputs.safetensors without the
    /// batch prefix (`eval.`, `pairs.`).
    pub fn named(&self) -> Vec<(&'static str, super::NamedTensor<B>)> {
        use super::NamedTensor::{D2, D3};
        let mut out = vec![
            ("txt_embeddings", D3(self.txt_embeddings.clone())),
            ("img_embeddings", D3(self.img_embeddings.clone())),
            ("embedding_output", D3(self.embedding_output.clone())),
            ("sequence_output", D3(self.sequence_output.clone())),
            ("pooled", D2(self.pooled.clone())),
            ("rank_scores", D2(self.rank_scores.clone())),
        ];
        if let Some(s) = &self.itm_scores {
            out.push(("itm_scores", D2(s.clone())));
        }
        out
    }
}

/// UNITER backbone plus the retrieval heads. Parameter names follow the checkpoint
/// (`uniter.`/`bert.` prefix stripped; model_conversion/keymap.rs).
#[derive(Module, Debug)]
pub struct UniterItm<B: Backend> {
    pub embeddings: TextEmbeddings<B>,
    pub img_embeddings: ImageEmbeddings<B>,
    pub encoder: Encoder<B>,
    pub pooler: Pooler<B>,
    /// `itm_output` Linear(H, 2): the pre-training ITM head, kept when the file has it because
    /// `rank_output` is initialised from its row 1 for ITM-only models (UNITER `init_output`).
    pub itm_output: Option<Linear<B>>,
    /// `rank_output` Linear(H, 1): the re-ranking score.
    pub rank_output: Linear<B>,
}

impl<B: Backend> UniterItm<B> {
    /// A randomly initialised model; `itm_head` adds the `itm_output` head.
    pub fn new(cfg: &EncoderConfig, itm_head: bool, device: &B::Device) -> Self {
        let h = cfg.hidden_size;
        Self {
            embeddings: TextEmbeddings::new(cfg, device),
            img_embeddings: ImageEmbeddings::new(cfg, device),
            encoder: Encoder::new(cfg, device),
            pooler: Pooler::new(h, device),
            itm_output: itm_head.then(|| LinearConfig::new(h, 2).init(device)),
            rank_output: LinearConfig::new(h, 1).init(device),
        }
    }

    /// The same model with fused query/key/value projections for inference
    /// ([`Encoder::fuse_qkv`]; unchanged on autodiff backends).
    pub fn fuse_qkv(mut self) -> Self {
        self.encoder = self.encoder.fuse_qkv();
        self
    }

    /// `rank_output ← itm_output[1]` (UNITER `init_output`, used by `inf_itm.py` when the
    /// checkpoint has no `rank_output`). No-op without an ITM head.
    pub fn init_rank_from_itm(mut self) -> Self {
        if let Some(itm) = &self.itm_output {
            // burn stores Linear weights `[in, out]`: PyTorch row 1 is column 1 here.
            let [h, _] = itm.weight.dims();
            let w = itm.weight.val().narrow(1, 1, 1).reshape([h, 1]);
            self.rank_output.weight = Param::from_tensor(w);
            if let Some(b) = &itm.bias {
                self.rank_output.bias = Some(Param::from_tensor(b.val().narrow(0, 1, 1)));
            }
        }
        self
    }

    /// Text `[batch, max_tl, H]`, region `[batch, max_nbb, H]` and gathered `[batch, out, H]`
    /// embeddings.
    fn embed(&self, input: &ItmInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        let txt = self.embeddings.forward(input.input_ids.clone());
        let type_row = self
            .embeddings
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 1, 1);
        let img = self.img_embeddings.forward(
            input.img_feat.clone(),
            input.img_pos_feat.clone(),
            type_row,
            None,
        );
        let [batch, tl, hidden] = txt.dims();
        let [_, nbb, _] = img.dims();
        let [_, out] = input.gather_index.dims();
        // `torch.gather(cat, 1, gather_index.expand(.., H))` as one row selection over the
        // flattened `[batch * (tl + nbb), H]` concatenation: row b's index j becomes
        // `b * (tl + nbb) + gather_index[b, j]`.
        let width = (tl + nbb) as i64;
        let device = txt.device();
        let offsets = Tensor::<B, 1, Int>::arange(0..batch as i64, &device)
            .mul_scalar(width)
            .reshape([batch, 1]);
        let flat_index = (input.gather_index.clone() + offsets).reshape([batch * out]);
        let cat =
            Tensor::cat(vec![txt.clone(), img.clone()], 1).reshape([batch * (tl + nbb), hidden]);
        let emb = cat.select(0, flat_index).reshape([batch, out, hidden]);
        (txt, img, emb)
    }

    /// `pooled` `[batch, H]` → `rank_scores` `[batch, 1]`.
    fn head(&self, sequence_output: Tensor<B, 3>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let pooled = self.pooler.forward(first_token(sequence_output));
        let scores = self.rank_output.forward(pooled.clone());
        (pooled, scores)
    }

    /// Re-ranking scores `[batch, 1]` (what `forward(batch, compute_loss=False)` returns).
    pub fn forward(&self, input: &ItmInput<B>) -> Tensor<B, 2> {
        let (_, _, emb) = self.embed(input);
        let seq = self.encoder.forward(emb, input.attention_mask.clone());
        self.head(seq).1
    }

    /// Every stage, for parity checks.
    pub fn forward_stages(&self, input: &ItmInput<B>) -> ItmStages<B> {
        let (txt, img, emb) = self.embed(input);
        let seq = self
            .encoder
            .forward(emb.clone(), input.attention_mask.clone());
        let (pooled, rank_scores) = self.head(seq.clone());
        let itm_scores = self.itm_output.as_ref().map(|l| l.forward(pooled.clone()));
        ItmStages {
            txt_embeddings: txt,
            img_embeddings: img,
            embedding_output: emb,
            sequence_output: seq,
            pooled,
            rank_scores,
            itm_scores,
        }
    }
}

/// UNITER's ITM training loss before the mean: `rank_scores` `[n_items * sample_size, 1]`,
/// viewed `[n_items, sample_size]` with the positive first, gives
/// `clamp(margin + sigmoid(s[:, 1:]) - sigmoid(s[:, :1]), 0)` `[n_items, sample_size - 1]`.
/// `sample_size` must divide the batch and be at least 2 (callers check).
pub fn rank_loss<B: Backend>(
    rank_scores: Tensor<B, 2>,
    sample_size: usize,
    margin: f64,
) -> Tensor<B, 2> {
    let [rows, _] = rank_scores.dims();
    let items = rows / sample_size;
    let s = sigmoid(rank_scores.reshape([items, sample_size]));
    let pos = s.clone().narrow(1, 0, 1);
    let neg = s.narrow(1, 1, sample_size - 1);
    (neg - pos).add_scalar(margin).clamp_min(0.0)
}
