from edgedistill.distill.losses.base import kl, register


@register("forward_kl", reference="Hinton et al. 2015, 'Distilling the Knowledge in a Neural Network': KL(p_T || q_S)")
def forward_kl(s_logp, t_logp):
    """Mean-seeking: the student must cover every token the teacher gives mass to."""
    return kl(t_logp, s_logp)
