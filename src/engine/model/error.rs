//! The error of loading or running a model: a fault of the input the user can fix
//! (`Invalid`, with a message saying what), or a failure inside candle.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
