//! The pre-training objectives (spec §6), named once for the data layer that batches them
//! ([`crate::data::pretrain`]) and the model that computes their losses
//! ([`crate::model::BiEncoderForPretraining`]); neither depends on the other for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A pre-training objective, i.e. `name.split('_')[0]` of a task-mixture entry such as
/// `mlm_coco_cap` (`task` of pretrain.py; `mrc` is not in the released config). The order is
/// the one metrics and dashboards list tasks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PretrainTask {
    /// VMLM (spec §6.2): the text tower predicts masked caption tokens; image unmasked.
    Mlm,
    /// SMRM feature regression (spec §6.3): masked regions, targets = their features.
    Mrfr,
    /// SMRM classification against the detector's soft labels (KL).
    Mrckl,
    /// SMRM classification with cross-entropy against the detector's argmax class.
    Mrc,
    /// CMR: in-batch contrastive retrieval.
    Itm,
}

impl PretrainTask {
    pub const ALL: [PretrainTask; 5] = [
        PretrainTask::Mlm,
        PretrainTask::Mrfr,
        PretrainTask::Mrckl,
        PretrainTask::Mrc,
        PretrainTask::Itm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PretrainTask::Mlm => "mlm",
            PretrainTask::Mrfr => "mrfr",
            PretrainTask::Mrckl => "mrckl",
            PretrainTask::Mrc => "mrc",
            PretrainTask::Itm => "itm",
        }
    }

    /// Whether the batch masks regions (`img_masks`) rather than words.
    pub fn masks_regions(self) -> bool {
        matches!(
            self,
            PretrainTask::Mrfr | PretrainTask::Mrckl | PretrainTask::Mrc
        )
    }

    /// Whether the batch carries the detector's soft labels.
    pub fn needs_soft_labels(self) -> bool {
        matches!(self, PretrainTask::Mrc | PretrainTask::Mrckl)
    }
}

impl fmt::Display for PretrainTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PretrainTask {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PretrainTask::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown pre-training task {s:?} (expected mlm, mrfr, mrckl, mrc or itm)")
            })
    }
}
