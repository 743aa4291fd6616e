from .kd_kl_div_loss import KnowledgeDistillationKLDivLoss, kd_kl_div_loss

__all__ = ['KnowledgeDistillationKLDivLoss', 'kd_kl_div_loss']
