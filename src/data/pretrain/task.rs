//! The pre-training tasks the data layer can batch (spec §6.1 – §6.4).

use crate::data::DataError;

pub use crate::pretrain_task::PretrainTask;

impl PretrainTask {
    /// The task of a task-mixture entry (`mlm_coco_cap` → MLM), as the data layer reads it.
    pub fn from_pool_name(name: &str) -> Result<Self, DataError> {
        let task = name.split('_').next().unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|t| t.name() == task)
            .ok_or_else(|| {
                DataError::PretrainConfig(format!(
                    "unknown pre-training task '{task}' (expected one of mlm, mrfr, mrc, mrckl, itm)"
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
