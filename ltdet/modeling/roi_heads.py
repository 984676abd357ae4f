"""ROI heads that build ltdet's box predictor (detectron2 has no box-predictor registry, so, as
PointRend does, a registered ROIHeads subclass swaps it in). Mask head and box head are stock."""

from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .box_predictor import LongTailFastRCNNOutputLayers


@ROI_HEADS_REGISTRY.register()
class LongTailROIHeads(StandardROIHeads):
    """StandardROIHeads with ``LongTailFastRCNNOutputLayers`` (loss chosen by LTDET.LOSS.NAME)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LongTailFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
