from edgedistill.distill.losses.base import register


@register("tvd", reference="Wen et al. 2023, f-divergence KD: total variation 0.5·sum|p - q|")
def tvd(s_logp, t_logp):
    return 0.5 * (t_logp.exp() - s_logp.exp()).abs().sum(-1)
