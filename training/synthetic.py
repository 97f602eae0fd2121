"""Seeded synthetic e-commerce FAQ questions, to grow a real KB to sizes no public set has (100k, 1M).

A big merchant's KB is mostly the same few intents (shipping, sizes, warranty, returns, usage) asked about
many products and models, so the generator crosses intent templates with product, brand, model code,
attribute and place slots. The model codes give the long tail of rare terms a real catalogue has; the
templates give the frequent terms (怎么, 可以, 吗) every question shares. Same seed, same questions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


PRODUCTS = _words(
    "手机 耳机 蓝牙耳机 充电宝 数据线 平板 笔记本电脑 键盘 鼠标 显示器 路由器 智能手表 手环 相机 镜头 "
    "冰箱 洗衣机 空调 电视 热水器 油烟机 燃气灶 微波炉 电饭煲 空气炸锅 破壁机 豆浆机 电水壶 扫地机器人 "
    "吸尘器 加湿器 净水器 电风扇 吹风机 剃须刀 电动牙刷 羽绒服 冲锋衣 卫衣 牛仔裤 连衣裙 衬衫 运动鞋 "
    "跑鞋 凉鞋 双肩包 行李箱 床垫 枕头 四件套 沙发 餐桌 办公椅 奶粉 纸尿裤 婴儿车 安全座椅 面霜 精华液 "
    "洗面奶 防晒霜 口红 洗发水 沐浴露 牙膏 猫粮 狗粮 大米 食用油 坚果礼盒 茶叶 咖啡豆 牛奶 白酒 红酒 "
    "自行车 电动车 头盔 帐篷 瑜伽垫 哑铃 跑步机 钓鱼竿 打印机 墨盒 投影仪 音箱 游戏机 手柄"
)
BRANDS = _words(
    "华为 小米 荣耀 苹果 联想 海尔 美的 格力 九阳 苏泊尔 戴森 飞利浦 李宁 安踏 耐克 阿迪达斯 波司登 "
    "优衣库 三只松鼠 伊利 蒙牛 飞鹤 帮宝适 欧莱雅 兰蔻 舒肤佳 云南白药 皇家 京东京造 网易严选 索尼 佳能 "
    "大疆 倍思 绿联 公牛 爱普生 惠普 罗技 雷蛇"
)
ATTRIBUTES = _words(
    "颜色 尺码 尺寸 重量 材质 容量 功率 续航 电池 屏幕 内存 保修期 产地 保质期 包装 配件 说明书 发票 "
    "噪音 能效等级 适用人群 适用年龄 防水等级 充电时间 质保"
)
PLACES = _words(
    "北京 上海 广州 深圳 杭州 南京 成都 重庆 武汉 西安 长沙 郑州 济南 青岛 沈阳 哈尔滨 昆明 贵阳 南宁 "
    "福州 厦门 合肥 南昌 太原 石家庄 天津 苏州 无锡 宁波 温州 乌鲁木齐 拉萨 海口 兰州 呼和浩特"
)
ISSUES = _words("开不了机 充不进电 有异响 漏水 发热严重 连不上网 屏幕闪烁 掉色 起球 开线 缺配件 有划痕")
TEMPLATES = (
    "{brand}{product}{model}的{attr}是多少",
    "{product}{model}有哪些{attr}可以选",
    "{brand}{product}{model}支持七天无理由退货吗",
    "我买的{product}{model}{issue}怎么办",
    "{product}{model}{issue}可以换新吗",
    "{brand}{product}{model}发货到{place}要几天",
    "{place}能买{brand}{product}{model}吗",
    "{product}{model}的{attr}和{model2}一样吗",
    "{brand}{product}{model}和{model2}有什么区别",
    "{product}{model}现在下单什么时候发货",
    "{brand}{product}{model}保修多久",
    "{product}{model}坏了去哪里修",
    "{brand}{product}{model}可以开增值税发票吗",
    "{product}{model}有没有{attr}更大的",
    "{brand}{product}{model}是正品吗",
    "{product}{model}能用优惠券吗",
    "{product}{model}怎么安装",
    "{brand}{product}{model}怎么使用",
    "{product}{model}到{place}包邮吗",
    "{product}{model}{issue}是质量问题吗",
    "{brand}{product}{model}的{attr}怎么看",
    "买{product}{model}送不送{attr}",
    "{product}{model}价格保护多少天",
    "{brand}{product}{model}还会降价吗",
    "{product}{model}退货运费谁出",
    "{product}{model}可以分期付款吗",
    "{brand}{product}{model}有现货吗",
    "{product}{model}什么时候补货",
)
_LETTERS = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ"))


def _model_code(rng: np.random.Generator) -> str:
    letters = "".join(rng.choice(_LETTERS, size=int(rng.integers(1, 3))))
    return f"{letters}{int(rng.integers(1, 1000))}"


def synthetic_questions(n: int, seed: int = 0, exclude: set[str] | None = None) -> list[str]:
    """`n` distinct questions (none in `exclude`), the same for the same seed."""
    rng = np.random.default_rng(seed)
    seen = set(exclude or ())
    out: list[str] = []
    while len(out) < n:
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        q = template.format(
            brand=BRANDS[int(rng.integers(len(BRANDS)))],
            product=PRODUCTS[int(rng.integers(len(PRODUCTS)))],
            model=_model_code(rng),
            model2=_model_code(rng),
            attr=ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))],
            place=PLACES[int(rng.integers(len(PLACES)))],
            issue=ISSUES[int(rng.integers(len(ISSUES)))],
        )
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


def iter_rows(questions: list[str], prefix: str = "syn") -> Iterator[dict[str, str]]:
    """KB rows (the KB file's columns) for generated questions."""
    for i, q in enumerate(questions):
        yield {
            "id": f"{prefix}-{i:07d}",
            "question": q,
            "similar": "",
            "answer": f"[answer of {prefix}-{i:07d}]",
            "category": "synthetic",
        }
