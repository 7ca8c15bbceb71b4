//! The pre-training tasks the data layer can batch (spec §6.1 – §6.4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::DataError;

/// A pre-training objective, i.e. `name.split('_')[0]` of a task-mixture entry such as
/// `mlm_coco_cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PretrainTask {
    /// VMLM (spec §6.2): masked caption tokens, unmasked image.
    Mlm,
    /// SMRM feature regression (spec §6.3): masked regions, targets = their features.
    Mrfr,
    /// SMRM classification with cross-entropy against the detector's argmax class.
    Mrc,
    /// SMRM classification with KL against the detector's soft labels (the config's choice).
    Mrckl,
    /// CMR (spec §6.4): unmasked true pairs, in-batch contrastive loss.
    Itm,
}

impl PretrainTask {
    pub const ALL: [PretrainTask; 5] = [Self::Mlm, Self::Mrfr, Self::Mrc, Self::Mrckl, Self::Itm];

    /// The reference's task string.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mlm => "mlm",
            Self::Mrfr => "mrfr",
            Self::Mrc => "mrc",
            Self::Mrckl => "mrckl",
            Self::Itm => "itm",
        }
    }

    /// The task of a mixture entry `{task}_{dataset}` (`pretrain.py`: `name.split('_')[0]`).
    pub fn from_pool_name(name: &str) -> Result<Self, DataError> {
        name.split('_').next().unwrap_or(name).parse()
    }

    /// Whether items carry region masks (MRFR and both MRC variants share the MRM recipe;
    /// `task.startswith('mrc')` builds `MrcDataset` for `mrc` and `mrckl`).
    pub fn masks_regions(self) -> bool {
        matches!(self, Self::Mrfr | Self::Mrc | Self::Mrckl)
    }

    /// Whether items carry detector soft labels (`label_targets`).
    pub fn needs_soft_labels(self) -> bool {
        matches!(self, Self::Mrc | Self::Mrckl)
    }
}

impl fmt::Display for PretrainTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PretrainTask {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                DataError::PretrainConfig(format!(
                    "unknown pre-training task '{s}' (expected one of mlm, mrfr, mrc, mrckl, itm)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        assert_eq!(
            PretrainTask::from_pool_name("mrckl_vg_cap").unwrap(),
            PretrainTask::Mrckl
        );
        assert_eq!(
            PretrainTask::from_pool_name("itm").unwrap(),
            PretrainTask::Itm
        );
        let msg = PretrainTask::from_pool_name("mrm-nce_cc")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'mrm-nce'"), "{msg}");
    }
}
