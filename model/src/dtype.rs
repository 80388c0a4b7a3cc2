//! Tensor and parameter dtypes: the casts every layer uses. A leaf module
//! (burn only), so that the layers, LoRA and the fused kernels can use it
//! without reaching into [`crate::precision`], which knows the whole model.

use burn::module::{ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `x` in f32 (no copy when it already is).
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(x, DType::F32)
}

/// `x` in `dtype`, a float dtype (no copy when it already is).
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// A module mapper that stores every float parameter in one dtype, keeping
/// which ones require a gradient (`module.map(&mut CastParams(DType::BF16))`;
/// LoRA adapters are walked separately, see [`crate::lora::map_adapters`]).
#[derive(Debug, Clone, Copy)]
pub struct CastParams(pub DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if tensor.dtype() == self.0 {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let trained = tensor.is_require_grad();
        // A fresh leaf: the cast itself is not part of any graph.
        let cast = to_dtype(tensor, self.0).detach();
        let cast = if trained { cast.require_grad() } else { cast };
        Param::from_mapped_value(id, cast, mapper)
    }
}
