//! Input embeddings: BERT/UNITER text embeddings and UNITER region embeddings (spec §2.2, §2.3).

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, Linear, LinearConfig,
};
use burn::prelude::*;

use super::config::{EncoderConfig, IMG_FEAT_DIM, IMG_POS_DIM};
use super::transformer::{layer_norm, linear3};

/// `word[ids] + position[pos] + token_type[type]` → LayerNorm → dropout
/// (`BertEmbeddings` / `UniterTextEmbeddings`).
#[derive(Module, Debug)]
pub struct TextEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> TextEmbeddings<B> {
    pub fn new(cfg: &EncoderConfig, device: &B::Device) -> Self {
        let h = cfg.hidden_size;
        Self {
            word_embeddings: EmbeddingConfig::new(cfg.vocab_size, h).init(device),
            position_embeddings: EmbeddingConfig::new(cfg.max_position_embeddings, h).init(device),
            token_type_embeddings: EmbeddingConfig::new(cfg.type_vocab_size, h).init(device),
            layer_norm: layer_norm(h, device),
            dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
        }
    }

    /// `input_ids`: `[batch, seq]`; positions are `arange(seq)` and token types 0, as in every
    /// reference call. Returns `[batch, seq, H]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let words = self.word_embeddings.forward(input_ids);
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let pos = self.position_embeddings.forward(positions);
        let types = self
            .token_type_embeddings
            .forward(Tensor::<B, 2, Int>::zeros([1, 1], &device));
        let [_, _, h] = words.dims();
        let sum = words + pos + types;
        let normed = self.layer_norm.forward(sum.reshape([batch * seq, h]));
        self.dropout.forward(normed.reshape([batch, seq, h]))
    }
}

/// Region embeddings of UNITER (`UniterImageEmbeddings`):
/// `LayerNorm(LN_img(img_linear(f)) + LN_pos(pos_linear(p)) + type_emb[1])` → dropout.
/// The type table is the text embeddings' `token_type_embeddings` (shared upstream), so it is
/// passed in rather than owned.
#[derive(Module, Debug)]
pub struct ImageEmbeddings<B: Backend> {
    pub img_linear: Linear<B>,
    pub img_layer_norm: LayerNorm<B>,
    pub pos_linear: Linear<B>,
    pub pos_layer_norm: LayerNorm<B>,
    /// Row 1 is added to masked regions' raw features in pre-training; row 0 is forced to zero.
    pub mask_embedding: Embedding<B>,
    /// The final `LayerNorm` over the sum.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> ImageEmbeddings<B> {
    pub fn new(cfg: &EncoderConfig, device: &B::Device) -> Self {
        let h = cfg.hidden_size;
        Self {
            img_linear: LinearConfig::new(IMG_FEAT_DIM, h).init(device),
            img_layer_norm: layer_norm(h, device),
            pos_linear: LinearConfig::new(IMG_POS_DIM, h).init(device),
            pos_layer_norm: layer_norm(h, device),
            mask_embedding: EmbeddingConfig::new(2, IMG_FEAT_DIM).init(device),
            layer_norm: layer_norm(h, device),
            dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
        }
    }

    /// `img_feat`: `[batch, n, 2048]`, `img_pos_feat`: `[batch, n, 7]`, `type_row`: `[1, H]`
    /// (`token_type_embeddings[1]`), optional `img_masks`: `[batch, n]` of 0/1 (spec §6.3).
    /// Returns `[batch, n, H]`.
    pub fn forward(
        &self,
        img_feat: Tensor<B, 3>,
        img_pos_feat: Tensor<B, 3>,
        type_row: Tensor<B, 2>,
        img_masks: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let img_feat = match img_masks {
            Some(masks) => {
                // Row 0 is zeroed on every forward upstream, so only row 1 can contribute.
                let row1 = self.mask_embedding.weight.val().narrow(0, 1, 1);
                let [b, n] = masks.dims();
                let m = masks.float().reshape([b, n, 1]);
                img_feat + m * row1.unsqueeze::<3>()
            }
            None => img_feat,
        };
        let [b, n, _] = img_feat.dims();
        let h = self
            .img_layer_norm
            .forward(linear3(&self.img_linear, img_feat));
        let p = self
            .pos_layer_norm
            .forward(linear3(&self.pos_linear, img_pos_feat));
        let [_, _, hid] = h.dims();
        let sum = h + p + type_row.unsqueeze::<3>();
        let out = self.layer_norm.forward(sum.reshape([b * n, hid]));
        self.dropout.forward(out.reshape([b, n, hid]))
    }
}
