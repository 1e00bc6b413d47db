from edgedistill.distill.losses.base import kl, register


@register("reverse_kl", reference="Gu et al. 2024, MiniLLM, eq. 1: KL(q_S || p_T)")
def reverse_kl(s_logp, t_logp):
    """Mode-seeking: the student may ignore low-mass teacher tokens but is punished for mass the teacher lacks."""
    return kl(s_logp, t_logp)
