//! A device's update: the change of each tensor it trained from the round's shared adapter.
//! Under FFA-LoRA the frozen `A`s are not sent. The server adds the update back to the shared
//! adapter to recover the device's adapter.

use std::collections::BTreeMap;

use super::Rule;
use crate::patch::Values;

/// Whether devices send tensor `name` under `rule` (FFA-LoRA keeps `A` frozen and shared).
pub fn is_sent(rule: Rule, name: &str) -> bool {
    !(rule == Rule::Ffa && name.ends_with(".lora_A.weight"))
}

/// `trained − global` for each tensor sent under `rule`, in `global`'s order.
pub fn delta(rule: Rule, global: &[Values], trained: &[Values]) -> Result<Vec<Values>, String> {
    let trained: BTreeMap<&str, &Values> = trained.iter().map(|v| (v.name.as_str(), v)).collect();
    global
        .iter()
        .filter(|g| is_sent(rule, &g.name))
        .map(|g| {
            let t = trained
                .get(g.name.as_str())
                .ok_or_else(|| format!("the trained adapter has no '{}'", g.name))?;
            if t.shape != g.shape {
                return Err(format!(
                    "'{}' has shape {:?}, the shared adapter's is {:?}",
                    g.name, t.shape, g.shape
                ));
            }
            Ok(Values {
                name: g.name.clone(),
                shape: g.shape.clone(),
                values: t.values.iter().zip(&g.values).map(|(t, g)| t - g).collect(),
            })
        })
        .collect()
}

/// `global + delta`: the device's adapter (tensors the update does not carry are `global`'s).
/// A tensor the shared adapter lacks, of another shape, or not finite is an error naming it.
pub fn apply(global: &[Values], delta: &[Values]) -> Result<Vec<Values>, String> {
    let mut out = global.to_vec();
    let index: BTreeMap<&str, usize> = global.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect();
    for d in delta {
        let &i = index
            .get(d.name.as_str())
            .ok_or_else(|| format!("'{}' is not a tensor of the shared adapter", d.name))?;
        if d.shape != global[i].shape {
            return Err(format!(
                "'{}' has shape {:?}, the shared adapter's is {:?}",
                d.name, d.shape, global[i].shape
            ));
        }
        if let Some(bad) = d.values.iter().find(|x| !x.is_finite()) {
            return Err(format!("'{}' holds {bad}", d.name));
        }
        out[i].values.iter_mut().zip(&d.values).for_each(|(o, d)| *o += d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, values: &[f32]) -> Values {
        Values { name: name.into(), shape: vec![1, values.len()], values: values.to_vec() }
    }

    #[test]
    fn an_update_applied_to_the_global_gives_the_trained_adapter_back() {
        let global = [v("x.lora_A.weight", &[1.0, 2.0]), v("x.lora_B.weight", &[0.0, 0.5])];
        let trained = [v("x.lora_A.weight", &[1.5, 2.0]), v("x.lora_B.weight", &[0.25, 0.5])];
        let full = delta(Rule::FedAvg, &global, &trained).unwrap();
        assert_eq!(apply(&global, &full).unwrap(), trained.to_vec());
        let ffa = delta(Rule::Ffa, &global, &trained).unwrap();
        assert_eq!(ffa.len(), 1);
        assert_eq!(ffa[0].values, vec![0.25, 0.0]);
        let back = apply(&global, &ffa).unwrap();
        assert_eq!(back[0].values, global[0].values);
        assert!(apply(&global, &[v("y.lora_B.weight", &[1.0, 1.0])])
            .unwrap_err()
            .contains("'y.lora_B.weight'"));
        assert!(apply(&global, &[v("x.lora_B.weight", &[f32::INFINITY, 1.0])]).unwrap_err().contains("inf"));
    }
}
