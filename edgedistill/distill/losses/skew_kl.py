from edgedistill.distill.losses.base import kl, log_mix, register


@register("skew_kl", params={"alpha": (0.1, 0.0, 1.0)},
          reference="Ko et al. 2024, DistiLLM, eq. 3: KL(p || alpha·p + (1-alpha)·q)")
def skew_kl(s_logp, t_logp, alpha=0.1):
    """Forward KL against a student distribution mixed with a little of the teacher: bounded gradients."""
    return kl(t_logp, log_mix(t_logp, s_logp, alpha))


@register("skew_reverse_kl", params={"alpha": (0.1, 0.0, 1.0)},
          reference="Ko et al. 2024, DistiLLM, eq. 4: KL(q || alpha·q + (1-alpha)·p)")
def skew_reverse_kl(s_logp, t_logp, alpha=0.1):
    return kl(s_logp, log_mix(s_logp, t_logp, alpha))
