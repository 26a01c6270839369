//! The diagonal of the empirical Fisher information of the blocks' linear weights: for
//! each calibration window, the gradient of the window's mean next-token loss with
//! respect to every weight (one backward pass through the model, candle autograd), squared
//! and averaged over windows: `F_ij = E_w[(∂L_w/∂W_ij)²]`. Half of `Σ F_ij·δ_ij²`
//! estimates the loss increase a perturbation `δ` of the weights causes (second order),
//! in the same units for every tensor, which is what a bit budget spends by
//! (`--sensitivity fisher`, [`crate::plan`]). Stored beside the input statistics as
//! `<linear>.fisher` (`[out, in]`, f32), so the file grows by 4 bytes per weight.
//!
//! Cost: a forward and a backward pass per window with every activation kept; memory
//! is one window's activations plus two f32 copies of the linear weights (the variables
//! and the accumulators) and, transiently, their gradients.

use candle_core::{Tensor, D};

use crate::runtime::model::ce;
use crate::runtime::Model;
use crate::{Error, Result};

/// The Fisher diagonal of every block linear: `(weight name, shape, values)`.
pub type FisherDiag = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The mean next-token loss of one window (a scalar tensor, differentiable when the
/// model's weights are variables).
fn window_loss(model: &Model, input: &[u32]) -> Result<Tensor> {
    let t = input.len();
    let logits = model.forward(input)?;
    let logp = Model::log_softmax(&logits.narrow(0, 0, t - 1).map_err(ce)?)?;
    let targets = Tensor::from_vec(input[1..].to_vec(), (t - 1, 1), model.device()).map_err(ce)?;
    logp.gather(&targets, D::Minus1)
        .and_then(|x| x.mean_all())
        .and_then(|x| x.neg())
        .map_err(ce)
}

/// Runs a forward and backward pass per window (BOS prepended where given) and returns
/// the mean squared gradient of each block linear weight. `model` is switched to
/// differentiable ops and variable weights ([`Model::trainable_linears`]).
pub fn collect(
    model: &mut Model,
    windows: &[&[u32]],
    bos: Option<u32>,
    progress: &dyn Fn(usize, usize),
) -> Result<FisherDiag> {
    let vars = model.trainable_linears()?;
    let mut acc: Vec<Vec<f32>> = vars
        .iter()
        .map(|(_, v)| vec![0f32; v.as_tensor().elem_count()])
        .collect();
    for (k, w) in windows.iter().enumerate() {
        let mut input: Vec<u32> = bos.into_iter().collect();
        input.extend_from_slice(w);
        if input.len() < 2 {
            return Err(Error::TextTooShort {
                tokens: input.len(),
                window: 2,
            });
        }
        let grads = window_loss(model, &input)?.backward().map_err(ce)?;
        for ((name, var), a) in vars.iter().zip(acc.iter_mut()) {
            let g = grads.get(var.as_tensor()).ok_or_else(|| Error::Compute {
                message: format!("no gradient reached {name}"),
            })?;
            let g = g
                .flatten_all()
                .and_then(|g| g.to_vec1::<f32>())
                .map_err(ce)?;
            for (s, x) in a.iter_mut().zip(&g) {
                *s += x * x;
            }
        }
        progress(k + 1, windows.len());
    }
    let n = windows.len().max(1) as f32;
    Ok(vars
        .into_iter()
        .zip(acc)
        .map(|((name, var), mut a)| {
            a.iter_mut().for_each(|v| *v /= n);
            (name, var.as_tensor().dims().to_vec(), a)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The squared gradient of the largest-Fisher weight matches a central finite
    /// difference of the loss (the backward passes of the differentiable ops are right).
    #[test]
    fn fisher_is_the_squared_gradient_of_the_loss() {
        let tmp = tempfile::tempdir().expect("tmp");
        crate::synthetic::write_llama(
            tmp.path(),
            crate::dtype::DType::F32,
            crate::synthetic::LlamaShape::TINY,
        )
        .expect("model");
        let src = crate::models::open(tmp.path(), crate::dtype::DType::F32).expect("open");
        let mut model = Model::load(src.as_ref()).expect("load");
        let window: Vec<u32> = (0..48u32).map(|i| (i * 37 + 11) % 128).collect();
        let f = collect(&mut model, &[&window], None, &|_, _| {}).expect("fisher");
        assert_eq!(f.len(), 2 * 7, "7 linears per block");
        for (_, shape, v) in &f {
            assert_eq!(v.len(), shape.iter().product::<usize>());
            assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
        let vars = model.trainable_linears().expect("vars");
        for k in [0, 6, 13] {
            let (name, _, fv) = &f[k];
            let (vname, var) = &vars[k];
            assert_eq!(name, vname);
            let (e, g2) =
                fv.iter()
                    .copied()
                    .enumerate()
                    .fold((0, 0f32), |b, (i, x)| if x > b.1 { (i, x) } else { b });
            let g = (g2 as f64).sqrt();
            let w0 = var
                .as_tensor()
                .flatten_all()
                .expect("tensor")
                .to_vec1::<f32>()
                .expect("tensor");
            let dims = var.as_tensor().dims().to_vec();
            let eps = 1e-2f32;
            let loss_at = |d: f32| {
                let mut w = w0.clone();
                w[e] += d;
                var.set(&Tensor::from_vec(w, dims.as_slice(), model.device()).expect("tensor"))
                    .expect("tensor");
                window_loss(&model, &window)
                    .expect("tensor")
                    .to_scalar::<f32>()
                    .expect("tensor") as f64
            };
            let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
            assert!(
                (fd.abs() - g).abs() <= 0.05 * g + 1e-6,
                "{name}[{e}]: |finite difference| {fd} vs sqrt(Fisher) {g}"
            );
            loss_at(0.0);
        }
    }
}
